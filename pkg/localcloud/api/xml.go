package api

import (
	"sort"
	"strconv"
	"time"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

// Namespace is the ELBv2 API's XML namespace.
const Namespace = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

type members[T any] struct {
	Member []T `xml:"member"`
}

func list[T any](items []T) *members[T] { return &members[T]{Member: items} }

type xState struct {
	Code string `xml:"Code"`
}

type xAddress struct {
	IpAddress          string `xml:"IpAddress,omitempty"`
	PrivateIPv4Address string `xml:"PrivateIPv4Address,omitempty"`
}

type xAZ struct {
	ZoneName              string             `xml:"ZoneName"`
	SubnetId              string             `xml:"SubnetId"`
	LoadBalancerAddresses *members[xAddress] `xml:"LoadBalancerAddresses"`
}

type xLoadBalancer struct {
	LoadBalancerArn       string        `xml:"LoadBalancerArn"`
	DNSName               string        `xml:"DNSName"`
	CanonicalHostedZoneId string        `xml:"CanonicalHostedZoneId"`
	CreatedTime           string        `xml:"CreatedTime"`
	LoadBalancerName      string        `xml:"LoadBalancerName"`
	Scheme                string        `xml:"Scheme"`
	VpcId                 string        `xml:"VpcId"`
	State                 xState        `xml:"State"`
	Type                  string        `xml:"Type"`
	AvailabilityZones     *members[xAZ] `xml:"AvailabilityZones"`
	IpAddressType         string        `xml:"IpAddressType"`
}

const zone = "localcloud-1a"

func toXLB(lb store.LoadBalancer) xLoadBalancer {
	addr := xAddress{IpAddress: lb.Address}
	if lb.Scheme == "internal" {
		addr.PrivateIPv4Address = lb.Address
	}
	return xLoadBalancer{
		LoadBalancerArn:       lb.ARN,
		DNSName:               lb.DNSName,
		CanonicalHostedZoneId: "ZLOCALCLOUD",
		CreatedTime:           lb.CreatedAt.UTC().Format(time.RFC3339Nano),
		LoadBalancerName:      lb.Name,
		Scheme:                lb.Scheme,
		VpcId:                 lb.VPCID,
		State:                 xState{Code: lb.State},
		Type:                  "network",
		AvailabilityZones: list([]xAZ{{
			ZoneName:              zone,
			SubnetId:              "subnet-localcloud",
			LoadBalancerAddresses: list([]xAddress{addr}),
		}}),
		IpAddressType: "ipv4",
	}
}

type xTargetGroupRef struct {
	TargetGroupArn string `xml:"TargetGroupArn"`
	Weight         int32  `xml:"Weight"`
}

type xForwardConfig struct {
	TargetGroups *members[xTargetGroupRef] `xml:"TargetGroups"`
}

type xAction struct {
	Type           string          `xml:"Type"`
	TargetGroupArn string          `xml:"TargetGroupArn"`
	ForwardConfig  *xForwardConfig `xml:"ForwardConfig"`
}

type xListener struct {
	ListenerArn     string            `xml:"ListenerArn"`
	LoadBalancerArn string            `xml:"LoadBalancerArn"`
	Port            int32             `xml:"Port"`
	Protocol        string            `xml:"Protocol"`
	DefaultActions  *members[xAction] `xml:"DefaultActions"`
}

func toXListener(l store.Listener) xListener {
	return xListener{
		ListenerArn:     l.ARN,
		LoadBalancerArn: l.LoadBalancerARN,
		Port:            l.Port,
		Protocol:        l.Protocol,
		DefaultActions: list([]xAction{{
			Type:           "forward",
			TargetGroupArn: l.TargetGroupARN,
			ForwardConfig: &xForwardConfig{TargetGroups: list([]xTargetGroupRef{{
				TargetGroupArn: l.TargetGroupARN, Weight: 1,
			}})},
		}}),
	}
}

type xMatcher struct {
	HttpCode string `xml:"HttpCode"`
}

type xTargetGroup struct {
	TargetGroupArn             string           `xml:"TargetGroupArn"`
	TargetGroupName            string           `xml:"TargetGroupName"`
	Protocol                   string           `xml:"Protocol"`
	Port                       int32            `xml:"Port"`
	VpcId                      string           `xml:"VpcId"`
	HealthCheckProtocol        string           `xml:"HealthCheckProtocol"`
	HealthCheckPort            string           `xml:"HealthCheckPort"`
	HealthCheckEnabled         bool             `xml:"HealthCheckEnabled"`
	HealthCheckIntervalSeconds int32            `xml:"HealthCheckIntervalSeconds"`
	HealthCheckTimeoutSeconds  int32            `xml:"HealthCheckTimeoutSeconds"`
	HealthyThresholdCount      int32            `xml:"HealthyThresholdCount"`
	UnhealthyThresholdCount    int32            `xml:"UnhealthyThresholdCount"`
	HealthCheckPath            string           `xml:"HealthCheckPath,omitempty"`
	Matcher                    *xMatcher        `xml:"Matcher"`
	LoadBalancerArns           *members[string] `xml:"LoadBalancerArns"`
	TargetType                 string           `xml:"TargetType"`
	IpAddressType              string           `xml:"IpAddressType"`
}

func toXTG(tg store.TargetGroupWithLBs) xTargetGroup {
	hc := tg.HealthCheck
	x := xTargetGroup{
		TargetGroupArn:             tg.ARN,
		TargetGroupName:            tg.Name,
		Protocol:                   tg.Protocol,
		Port:                       tg.Port,
		VpcId:                      tg.VPCID,
		HealthCheckProtocol:        hc.Protocol,
		HealthCheckPort:            hc.Port,
		HealthCheckEnabled:         true,
		HealthCheckIntervalSeconds: hc.IntervalSeconds,
		HealthCheckTimeoutSeconds:  hc.TimeoutSeconds,
		HealthyThresholdCount:      hc.HealthyThreshold,
		UnhealthyThresholdCount:    hc.UnhealthyThreshold,
		HealthCheckPath:            hc.Path,
		LoadBalancerArns:           list(tg.LoadBalancerARNs),
		TargetType:                 "ip",
		IpAddressType:              "ipv4",
	}
	if hc.Protocol == "HTTP" {
		x.Matcher = &xMatcher{HttpCode: hc.Matcher}
	}
	return x
}

type xTag struct {
	Key   string `xml:"Key"`
	Value string `xml:"Value"`
}

func toXTags(m map[string]string) *members[xTag] {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]xTag, 0, len(keys))
	for _, k := range keys {
		out = append(out, xTag{Key: k, Value: m[k]})
	}
	return list(out)
}

type xTagDescription struct {
	ResourceArn string         `xml:"ResourceArn"`
	Tags        *members[xTag] `xml:"Tags"`
}

type xAttribute struct {
	Key   string `xml:"Key"`
	Value string `xml:"Value"`
}

func toXAttributes(m map[string]string) *members[xAttribute] {
	var out []xAttribute
	for _, t := range toXTags(m).Member {
		out = append(out, xAttribute(t))
	}
	return list(out)
}

type xTarget struct {
	Id               string `xml:"Id"`
	Port             int32  `xml:"Port"`
	AvailabilityZone string `xml:"AvailabilityZone,omitempty"`
}

type xTargetHealth struct {
	State       string `xml:"State"`
	Reason      string `xml:"Reason,omitempty"`
	Description string `xml:"Description,omitempty"`
}

type xTargetHealthDescription struct {
	Target          xTarget       `xml:"Target"`
	HealthCheckPort string        `xml:"HealthCheckPort"`
	TargetHealth    xTargetHealth `xml:"TargetHealth"`
}

func healthCheckPort(tg store.TargetGroup, t store.Target) string {
	if tg.HealthCheck.Port == "traffic-port" {
		return strconv.Itoa(int(t.Port))
	}
	return tg.HealthCheck.Port
}

// Results, one per action.

type describeLoadBalancersResult struct {
	LoadBalancers *members[xLoadBalancer] `xml:"LoadBalancers"`
	NextMarker    string                  `xml:"NextMarker,omitempty"`
}

type describeListenersResult struct {
	Listeners  *members[xListener] `xml:"Listeners"`
	NextMarker string              `xml:"NextMarker,omitempty"`
}

type describeTargetGroupsResult struct {
	TargetGroups *members[xTargetGroup] `xml:"TargetGroups"`
	NextMarker   string                 `xml:"NextMarker,omitempty"`
}

type attributesResult struct {
	Attributes *members[xAttribute] `xml:"Attributes"`
}

type describeTargetHealthResult struct {
	TargetHealthDescriptions *members[xTargetHealthDescription] `xml:"TargetHealthDescriptions"`
}

type describeTagsResult struct {
	TagDescriptions *members[xTagDescription] `xml:"TagDescriptions"`
}

type emptyResult struct{}

// xError is the body of an AWS Query protocol error.
type xError struct {
	XMLName   struct{} `xml:"ErrorResponse"`
	Xmlns     string   `xml:"xmlns,attr"`
	Type      string   `xml:"Error>Type"`
	Code      string   `xml:"Error>Code"`
	Message   string   `xml:"Error>Message"`
	RequestID string   `xml:"RequestId"`
}
