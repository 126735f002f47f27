package controller

import (
	"fmt"
	"sort"
	"strings"
	"time"

	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/directlb/directlb/pkg/localcloud"
)

// progressEvery is how often the gates bench prints where the run is.
const progressEvery = 30 * time.Second

// progress is one line of where a convergence run is: the cloud calls
// that set the bound, the controller's apiserver requests by method and
// its workqueues' depths (controller-runtime's metrics in this process).
func progress(elapsed time.Duration, srv *localcloud.Server, ingress, gates int) string {
	counts := srv.Faults().Counts()
	var sb strings.Builder
	fmt.Fprintf(&sb, "  [%4.0f s] ingress %d, gates True %d; cloud passed: CreateLoadBalancer %d, RegisterTargets %d, DescribeTargetHealth %d",
		elapsed.Seconds(), ingress, gates, counts["CreateLoadBalancer"]["pass"], counts["RegisterTargets"]["pass"], counts["DescribeTargetHealth"]["pass"])
	requests, depth := map[string]float64{}, map[string]float64{}
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		return sb.String() + "; metrics: " + err.Error() + "\n"
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch f.GetName() {
			case "rest_client_requests_total":
				requests[labels["method"]] += m.GetCounter().GetValue()
			case "workqueue_depth":
				depth[labels["name"]] = m.GetGauge().GetValue()
			}
		}
	}
	fmt.Fprintf(&sb, "; apiserver requests %s; queue depth %s\n", joinCounts(requests), joinCounts(depth))
	return sb.String()
}

func joinCounts(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%.0f", k, m[k]))
	}
	return strings.Join(parts, " ")
}
