package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/directlb/directlb/pkg/cloud"
)

const (
	// maxARNsPerDescribeTags is DescribeTags' limit.
	maxARNsPerDescribeTags  = 20
	attrDeregistrationDelay = "deregistration_delay.timeout_seconds"
)

func toSDKTags(t cloud.Tags) []types.Tag {
	if len(t) == 0 {
		return nil
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]types.Tag, 0, len(keys))
	for _, k := range keys {
		out = append(out, types.Tag{Key: awssdk.String(k), Value: awssdk.String(t[k])})
	}
	return out
}

func fromSDKTags(ts []types.Tag) cloud.Tags {
	out := cloud.Tags{}
	for _, t := range ts {
		out[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	return out
}

func fromSDKLoadBalancer(lb types.LoadBalancer) cloud.LoadBalancer {
	out := cloud.LoadBalancer{
		ARN:     awssdk.ToString(lb.LoadBalancerArn),
		Name:    awssdk.ToString(lb.LoadBalancerName),
		Scheme:  string(lb.Scheme),
		DNSName: awssdk.ToString(lb.DNSName),
	}
	if lb.State != nil {
		out.State = string(lb.State.Code)
	}
	for _, az := range lb.AvailabilityZones {
		for _, a := range az.LoadBalancerAddresses {
			switch {
			case a.IpAddress != nil:
				out.Addresses = append(out.Addresses, *a.IpAddress)
			case a.PrivateIPv4Address != nil:
				out.Addresses = append(out.Addresses, *a.PrivateIPv4Address)
			}
		}
	}
	return out
}

// withTags reads the tags of resources (DescribeTags) and returns those
// whose tags include want, with their tags filled in; of says where a
// resource's ARN and tags are. Resources that vanished meanwhile are left
// out.
func withTags[T any](ctx context.Context, c *Client, resources []T, want cloud.Tags, of func(*T) (arn string, tags *cloud.Tags)) ([]T, error) {
	arns := make([]string, len(resources))
	for i := range resources {
		arns[i], _ = of(&resources[i])
	}
	tagsByARN, err := c.tagsOf(ctx, arns)
	if err != nil {
		return nil, err
	}
	var out []T
	for _, r := range resources {
		arn, tags := of(&r)
		t, ok := tagsByARN[arn]
		if !ok || !t.Matches(want) {
			continue
		}
		*tags = t
		out = append(out, r)
	}
	return out, nil
}

// tagsOf returns the tags of arns, in batches of 20. Resources that vanish
// between listing and describing are left out.
func (c *Client) tagsOf(ctx context.Context, arns []string) (map[string]cloud.Tags, error) {
	out := map[string]cloud.Tags{}
	for start := 0; start < len(arns); start += maxARNsPerDescribeTags {
		batch := arns[start:min(start+maxARNsPerDescribeTags, len(arns))]
		res, err := c.ELB.DescribeTags(ctx, &elb.DescribeTagsInput{ResourceArns: batch})
		err = mapError("DescribeTags", err)
		if errors.Is(err, cloud.ErrNotFound) && len(batch) > 1 {
			// One of the batch is gone; ask one at a time to skip it.
			for _, a := range batch {
				one, err := c.tagsOf(ctx, []string{a})
				if err != nil {
					return nil, err
				}
				for k, v := range one {
					out[k] = v
				}
			}
			continue
		}
		if errors.Is(err, cloud.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, d := range res.TagDescriptions {
			out[awssdk.ToString(d.ResourceArn)] = fromSDKTags(d.Tags)
		}
	}
	return out, nil
}

// CreateLoadBalancer implements cloud.LoadBalancers.
func (c *Client) CreateLoadBalancer(ctx context.Context, spec cloud.LoadBalancerSpec) (cloud.LoadBalancer, error) {
	in := &elb.CreateLoadBalancerInput{
		Name:          awssdk.String(spec.Name),
		Type:          types.LoadBalancerTypeEnumNetwork,
		IpAddressType: types.IpAddressTypeIpv4,
		Tags:          toSDKTags(spec.Tags),
		Subnets:       c.subnets,
	}
	if spec.Scheme != "" {
		in.Scheme = types.LoadBalancerSchemeEnum(spec.Scheme)
	}
	res, err := c.ELB.CreateLoadBalancer(ctx, in)
	if err != nil {
		return cloud.LoadBalancer{}, fmt.Errorf("create load balancer %s: %w", spec.Name, mapError("CreateLoadBalancer", err))
	}
	one, err := onlyOne(res.LoadBalancers, "load balancers")
	if err != nil {
		return cloud.LoadBalancer{}, fmt.Errorf("create load balancer %s: %w", spec.Name, err)
	}
	lb := fromSDKLoadBalancer(one)
	lb.Tags = copyTags(spec.Tags)
	return lb, nil
}

// onlyOne returns the one resource a create call answers with, or says
// how many (what: their plural name) it answered with instead.
func onlyOne[T any](answer []T, what string) (T, error) {
	if len(answer) != 1 {
		var zero T
		return zero, fmt.Errorf("%d %s in the answer", len(answer), what)
	}
	return answer[0], nil
}

// copyTags is a copy of the tags a create call was given (never nil): the
// resource carries them, and the answer does not list them.
func copyTags(tags cloud.Tags) cloud.Tags {
	out := cloud.Tags{}
	maps.Copy(out, tags)
	return out
}

// ListLoadBalancers implements cloud.LoadBalancers.
func (c *Client) ListLoadBalancers(ctx context.Context, tags cloud.Tags) ([]cloud.LoadBalancer, error) {
	var all []cloud.LoadBalancer
	p := elb.NewDescribeLoadBalancersPaginator(c.ELB, &elb.DescribeLoadBalancersInput{PageSize: awssdk.Int32(c.pageSize)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list load balancers: %w", mapError("DescribeLoadBalancers", err))
		}
		for _, lb := range page.LoadBalancers {
			if lb.Type != "" && lb.Type != types.LoadBalancerTypeEnumNetwork {
				continue
			}
			all = append(all, fromSDKLoadBalancer(lb))
		}
	}
	out, err := withTags(ctx, c, all, tags, func(lb *cloud.LoadBalancer) (string, *cloud.Tags) { return lb.ARN, &lb.Tags })
	if err != nil {
		return nil, fmt.Errorf("list load balancers: %w", err)
	}
	return out, nil
}

// DeleteLoadBalancer implements cloud.LoadBalancers.
func (c *Client) DeleteLoadBalancer(ctx context.Context, arn string) error {
	_, err := c.ELB.DeleteLoadBalancer(ctx, &elb.DeleteLoadBalancerInput{LoadBalancerArn: awssdk.String(arn)})
	if err = mapError("DeleteLoadBalancer", err); err != nil && !errors.Is(err, cloud.ErrNotFound) {
		return fmt.Errorf("delete load balancer %s: %w", arn, err)
	}
	return nil
}

func healthCheckInput(hc cloud.HealthCheck) (proto types.ProtocolEnum, port, path *string, interval, timeout, healthy, unhealthy *int32, matcher *types.Matcher) {
	if hc.Protocol != "" {
		proto = types.ProtocolEnum(hc.Protocol)
	}
	if hc.Port != "" {
		port = awssdk.String(hc.Port)
	}
	if hc.Path != "" {
		path = awssdk.String(hc.Path)
	}
	opt := func(v int32) *int32 {
		if v == 0 {
			return nil
		}
		return awssdk.Int32(v)
	}
	if hc.Protocol == "HTTP" {
		matcher = &types.Matcher{HttpCode: awssdk.String("200-399")}
	}
	return proto, port, path, opt(hc.IntervalSeconds), opt(hc.TimeoutSeconds), opt(hc.HealthyThreshold), opt(hc.UnhealthyThreshold), matcher
}

func fromSDKTargetGroup(tg types.TargetGroup) cloud.TargetGroup {
	out := cloud.TargetGroup{
		ARN: awssdk.ToString(tg.TargetGroupArn),
		TargetGroupSpec: cloud.TargetGroupSpec{
			Name:     awssdk.ToString(tg.TargetGroupName),
			Protocol: cloud.Protocol(tg.Protocol),
			Port:     awssdk.ToInt32(tg.Port),
			VPCID:    awssdk.ToString(tg.VpcId),
			HealthCheck: cloud.HealthCheck{
				Protocol:           string(tg.HealthCheckProtocol),
				Port:               awssdk.ToString(tg.HealthCheckPort),
				Path:               awssdk.ToString(tg.HealthCheckPath),
				IntervalSeconds:    awssdk.ToInt32(tg.HealthCheckIntervalSeconds),
				TimeoutSeconds:     awssdk.ToInt32(tg.HealthCheckTimeoutSeconds),
				HealthyThreshold:   awssdk.ToInt32(tg.HealthyThresholdCount),
				UnhealthyThreshold: awssdk.ToInt32(tg.UnhealthyThresholdCount),
			},
		},
	}
	if len(tg.LoadBalancerArns) > 0 {
		out.LoadBalancerARNs = tg.LoadBalancerArns
	}
	return out
}

// CreateTargetGroup implements cloud.LoadBalancers. It creates an ip target
// group and then sets its deregistration delay (always: 0 means none).
func (c *Client) CreateTargetGroup(ctx context.Context, spec cloud.TargetGroupSpec) (cloud.TargetGroup, error) {
	proto, port, path, interval, timeout, healthy, unhealthy, matcher := healthCheckInput(spec.HealthCheck)
	in := &elb.CreateTargetGroupInput{
		Name:                       awssdk.String(spec.Name),
		Protocol:                   types.ProtocolEnum(spec.Protocol),
		Port:                       awssdk.Int32(spec.Port),
		TargetType:                 types.TargetTypeEnumIp,
		HealthCheckProtocol:        proto,
		HealthCheckPort:            port,
		HealthCheckPath:            path,
		HealthCheckIntervalSeconds: interval,
		HealthCheckTimeoutSeconds:  timeout,
		HealthyThresholdCount:      healthy,
		UnhealthyThresholdCount:    unhealthy,
		Matcher:                    matcher,
		Tags:                       toSDKTags(spec.Tags),
	}
	if spec.VPCID != "" {
		in.VpcId = awssdk.String(spec.VPCID)
	}
	res, err := c.ELB.CreateTargetGroup(ctx, in)
	if err != nil {
		return cloud.TargetGroup{}, fmt.Errorf("create target group %s: %w", spec.Name, mapError("CreateTargetGroup", err))
	}
	one, err := onlyOne(res.TargetGroups, "target groups")
	if err != nil {
		return cloud.TargetGroup{}, fmt.Errorf("create target group %s: %w", spec.Name, err)
	}
	tg := fromSDKTargetGroup(one)
	if err := c.setDeregistrationDelay(ctx, tg.ARN, spec.DeregistrationDelaySeconds); err != nil {
		return cloud.TargetGroup{}, fmt.Errorf("create target group %s: %w", spec.Name, err)
	}
	tg.DeregistrationDelaySeconds = spec.DeregistrationDelaySeconds
	tg.Tags = copyTags(spec.Tags)
	return tg, nil
}

func (c *Client) setDeregistrationDelay(ctx context.Context, arn string, seconds int32) error {
	_, err := c.ELB.ModifyTargetGroupAttributes(ctx, &elb.ModifyTargetGroupAttributesInput{
		TargetGroupArn: awssdk.String(arn),
		Attributes: []types.TargetGroupAttribute{{
			Key:   awssdk.String(attrDeregistrationDelay),
			Value: awssdk.String(strconv.Itoa(int(seconds))),
		}},
	})
	if err != nil {
		return fmt.Errorf("set deregistration delay of %s: %w", arn, mapError("ModifyTargetGroupAttributes", err))
	}
	return nil
}

// ListTargetGroups implements cloud.LoadBalancers. It reads no attributes:
// DeregistrationDelay is left 0, and DeregistrationDelay (the method) reads
// one group's.
func (c *Client) ListTargetGroups(ctx context.Context, tags cloud.Tags) ([]cloud.TargetGroup, error) {
	var all []cloud.TargetGroup
	p := elb.NewDescribeTargetGroupsPaginator(c.ELB, &elb.DescribeTargetGroupsInput{PageSize: awssdk.Int32(c.pageSize)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list target groups: %w", mapError("DescribeTargetGroups", err))
		}
		for _, tg := range page.TargetGroups {
			all = append(all, fromSDKTargetGroup(tg))
		}
	}
	matching, err := withTags(ctx, c, all, tags, func(tg *cloud.TargetGroup) (string, *cloud.Tags) { return tg.ARN, &tg.Tags })
	if err != nil {
		return nil, fmt.Errorf("list target groups: %w", err)
	}
	return matching, nil
}

// DeregistrationDelay implements cloud.LoadBalancers.
func (c *Client) DeregistrationDelay(ctx context.Context, arn string) (int32, error) {
	res, err := c.ELB.DescribeTargetGroupAttributes(ctx, &elb.DescribeTargetGroupAttributesInput{TargetGroupArn: awssdk.String(arn)})
	if err != nil {
		return 0, fmt.Errorf("attributes of target group %s: %w", arn, mapError("DescribeTargetGroupAttributes", err))
	}
	for _, a := range res.Attributes {
		if awssdk.ToString(a.Key) == attrDeregistrationDelay {
			n, _ := strconv.Atoi(awssdk.ToString(a.Value))
			return int32(n), nil
		}
	}
	return 0, nil
}

// ModifyTargetGroup implements cloud.LoadBalancers.
func (c *Client) ModifyTargetGroup(ctx context.Context, arn string, hc cloud.HealthCheck, deregistrationDelaySeconds int32) error {
	proto, port, path, interval, timeout, healthy, unhealthy, matcher := healthCheckInput(hc)
	_, err := c.ELB.ModifyTargetGroup(ctx, &elb.ModifyTargetGroupInput{
		TargetGroupArn:             awssdk.String(arn),
		HealthCheckProtocol:        proto,
		HealthCheckPort:            port,
		HealthCheckPath:            path,
		HealthCheckIntervalSeconds: interval,
		HealthCheckTimeoutSeconds:  timeout,
		HealthyThresholdCount:      healthy,
		UnhealthyThresholdCount:    unhealthy,
		Matcher:                    matcher,
	})
	if err != nil {
		return fmt.Errorf("modify target group %s: %w", arn, mapError("ModifyTargetGroup", err))
	}
	if err := c.setDeregistrationDelay(ctx, arn, deregistrationDelaySeconds); err != nil {
		return fmt.Errorf("modify target group %s: %w", arn, err)
	}
	return nil
}

// DeleteTargetGroup implements cloud.LoadBalancers.
func (c *Client) DeleteTargetGroup(ctx context.Context, arn string) error {
	_, err := c.ELB.DeleteTargetGroup(ctx, &elb.DeleteTargetGroupInput{TargetGroupArn: awssdk.String(arn)})
	if err = mapError("DeleteTargetGroup", err); err != nil && !errors.Is(err, cloud.ErrNotFound) {
		return fmt.Errorf("delete target group %s: %w", arn, err)
	}
	return nil
}

func forward(tgARN string) []types.Action {
	return []types.Action{{Type: types.ActionTypeEnumForward, TargetGroupArn: awssdk.String(tgARN)}}
}

func fromSDKListener(l types.Listener) cloud.Listener {
	out := cloud.Listener{
		ARN: awssdk.ToString(l.ListenerArn),
		ListenerSpec: cloud.ListenerSpec{
			LoadBalancerARN: awssdk.ToString(l.LoadBalancerArn),
			Protocol:        cloud.Protocol(l.Protocol),
			Port:            awssdk.ToInt32(l.Port),
		},
	}
	for _, a := range l.DefaultActions {
		if a.Type != types.ActionTypeEnumForward {
			continue
		}
		if a.TargetGroupArn != nil {
			out.TargetGroupARN = *a.TargetGroupArn
		} else if a.ForwardConfig != nil && len(a.ForwardConfig.TargetGroups) > 0 {
			out.TargetGroupARN = awssdk.ToString(a.ForwardConfig.TargetGroups[0].TargetGroupArn)
		}
	}
	return out
}

// CreateListener implements cloud.LoadBalancers.
func (c *Client) CreateListener(ctx context.Context, spec cloud.ListenerSpec) (cloud.Listener, error) {
	res, err := c.ELB.CreateListener(ctx, &elb.CreateListenerInput{
		LoadBalancerArn: awssdk.String(spec.LoadBalancerARN),
		Protocol:        types.ProtocolEnum(spec.Protocol),
		Port:            awssdk.Int32(spec.Port),
		DefaultActions:  forward(spec.TargetGroupARN),
		Tags:            toSDKTags(spec.Tags),
	})
	if err != nil {
		return cloud.Listener{}, fmt.Errorf("create listener %s/%d on %s: %w", spec.Protocol, spec.Port, spec.LoadBalancerARN, mapError("CreateListener", err))
	}
	one, err := onlyOne(res.Listeners, "listeners")
	if err != nil {
		return cloud.Listener{}, fmt.Errorf("create listener %s/%d on %s: %w", spec.Protocol, spec.Port, spec.LoadBalancerARN, err)
	}
	l := fromSDKListener(one)
	l.Tags = copyTags(spec.Tags)
	return l, nil
}

// ListListeners implements cloud.LoadBalancers.
func (c *Client) ListListeners(ctx context.Context, loadBalancerARN string) ([]cloud.Listener, error) {
	var out []cloud.Listener
	p := elb.NewDescribeListenersPaginator(c.ELB, &elb.DescribeListenersInput{
		LoadBalancerArn: awssdk.String(loadBalancerARN),
		PageSize:        awssdk.Int32(c.pageSize),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list listeners of %s: %w", loadBalancerARN, mapError("DescribeListeners", err))
		}
		for _, l := range page.Listeners {
			out = append(out, fromSDKListener(l))
		}
	}
	arns := make([]string, len(out))
	for i, l := range out {
		arns[i] = l.ARN
	}
	tagsByARN, err := c.tagsOf(ctx, arns)
	if err != nil {
		return nil, fmt.Errorf("list listeners of %s: %w", loadBalancerARN, err)
	}
	for i := range out {
		out[i].Tags = tagsByARN[out[i].ARN]
	}
	return out, nil
}

// ModifyListener implements cloud.LoadBalancers.
func (c *Client) ModifyListener(ctx context.Context, arn string, targetGroupARN string) error {
	_, err := c.ELB.ModifyListener(ctx, &elb.ModifyListenerInput{
		ListenerArn:    awssdk.String(arn),
		DefaultActions: forward(targetGroupARN),
	})
	if err != nil {
		return fmt.Errorf("modify listener %s: %w", arn, mapError("ModifyListener", err))
	}
	return nil
}

// DeleteListener implements cloud.LoadBalancers.
func (c *Client) DeleteListener(ctx context.Context, arn string) error {
	_, err := c.ELB.DeleteListener(ctx, &elb.DeleteListenerInput{ListenerArn: awssdk.String(arn)})
	if err = mapError("DeleteListener", err); err != nil && !errors.Is(err, cloud.ErrNotFound) {
		return fmt.Errorf("delete listener %s: %w", arn, err)
	}
	return nil
}

func toSDKTargets(ts []cloud.Target) []types.TargetDescription {
	out := make([]types.TargetDescription, len(ts))
	for i, t := range ts {
		out[i] = types.TargetDescription{Id: awssdk.String(t.IP), Port: awssdk.Int32(t.Port)}
	}
	return out
}

// RegisterTargets implements cloud.LoadBalancers, in requests of at most
// cloud.MaxTargetsPerCall targets.
func (c *Client) RegisterTargets(ctx context.Context, targetGroupARN string, targets []cloud.Target) error {
	return cloud.InBatches(targets, cloud.MaxTargetsPerCall, func(batch []cloud.Target) error {
		_, err := c.ELB.RegisterTargets(ctx, &elb.RegisterTargetsInput{
			TargetGroupArn: awssdk.String(targetGroupARN),
			Targets:        toSDKTargets(batch),
		})
		if err != nil {
			return fmt.Errorf("register targets %s: %w", targetGroupARN, mapError("RegisterTargets", err))
		}
		return nil
	})
}

// errGroupGone stops DeregisterTargets' batches: the group is gone, and
// with it its targets.
var errGroupGone = errors.New("target group gone")

// DeregisterTargets implements cloud.LoadBalancers, in requests of at most
// cloud.MaxTargetsPerCall targets. A target group that does not exist has
// no targets: that is success.
func (c *Client) DeregisterTargets(ctx context.Context, targetGroupARN string, targets []cloud.Target) error {
	err := cloud.InBatches(targets, cloud.MaxTargetsPerCall, func(batch []cloud.Target) error {
		_, err := c.ELB.DeregisterTargets(ctx, &elb.DeregisterTargetsInput{
			TargetGroupArn: awssdk.String(targetGroupARN),
			Targets:        toSDKTargets(batch),
		})
		if err = mapError("DeregisterTargets", err); errors.Is(err, cloud.ErrNotFound) {
			return errGroupGone
		} else if err != nil {
			return fmt.Errorf("deregister targets %s: %w", targetGroupARN, err)
		}
		return nil
	})
	if errors.Is(err, errGroupGone) {
		return nil
	}
	return err
}

// DescribeTargetHealth implements cloud.LoadBalancers.
func (c *Client) DescribeTargetHealth(ctx context.Context, targetGroupARN string) ([]cloud.TargetHealth, error) {
	res, err := c.ELB.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: awssdk.String(targetGroupARN)})
	if err != nil {
		return nil, fmt.Errorf("describe target health %s: %w", targetGroupARN, mapError("DescribeTargetHealth", err))
	}
	out := make([]cloud.TargetHealth, 0, len(res.TargetHealthDescriptions))
	for _, d := range res.TargetHealthDescriptions {
		th := cloud.TargetHealth{}
		if d.Target != nil {
			th.Target = cloud.Target{IP: awssdk.ToString(d.Target.Id), Port: awssdk.ToInt32(d.Target.Port)}
		}
		if d.TargetHealth != nil {
			th.State = cloud.TargetState(d.TargetHealth.State)
			th.Reason = string(d.TargetHealth.Reason)
			th.Description = awssdk.ToString(d.TargetHealth.Description)
		}
		out = append(out, th)
	}
	return out, nil
}
