package framework

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
)

// Cloud is a client of the bed's localcloud through the real SDK.
func Cloud(t *testing.T, b *Bed) *cloudaws.Client {
	t.Helper()
	cfg := cloudaws.DefaultConfig()
	cfg.Region = "us-east-1"
	cfg.Endpoint = b.Topology.LocalcloudURL
	cfg.Credentials = credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, "")
	c, err := cloudaws.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Targets returns the target group StartController made for the Service
// (svcKey: namespace/name) and its targets that are not draining, sorted,
// and the state of every target (for a failure message).
func Targets(ctx context.Context, c cloud.LoadBalancers, svcKey string) (cloud.TargetGroup, []string, string) {
	tgs, err := c.ListTargetGroups(ctx, cloud.Tags{cloud.TagCluster: Cluster, cloud.TagService: svcKey})
	if err != nil || len(tgs) != 1 {
		return cloud.TargetGroup{}, nil, fmt.Sprintf("target groups %d, err %v", len(tgs), err)
	}
	th, err := c.DescribeTargetHealth(ctx, tgs[0].ARN)
	if err != nil {
		return tgs[0], nil, err.Error()
	}
	var out, states []string
	for _, h := range th {
		states = append(states, fmt.Sprintf("%s=%s", h.Target, h.State))
		if h.State != cloud.TargetDraining {
			out = append(out, h.Target.String())
		}
	}
	sort.Strings(out)
	return tgs[0], out, strings.Join(states, " ")
}

// PodTargets returns the targets (ip:8080, sorted) the Ready app=echo pods
// of ns should be, how many pods there are, and their states.
func PodTargets(ctx context.Context, b *Bed, ns string) ([]string, int, string) {
	l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		return nil, 0, err.Error()
	}
	var want, states []string
	for _, p := range l.Items {
		states = append(states, fmt.Sprintf("%s ready=%v ip=%s", p.Name, Ready(&p), p.Status.PodIP))
		if Ready(&p) {
			want = append(want, p.Status.PodIP+":8080")
		}
	}
	sort.Strings(want)
	return want, len(l.Items), strings.Join(states, "; ")
}
