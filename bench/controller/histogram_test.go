package controller

import (
	"math"
	"testing"

	"go.uber.org/zap/zapcore"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

const zapErrorLevel = zapcore.ErrorLevel

// histogram is a snapshot of the controller's
// directlb_target_registration_seconds (cumulative bucket counts).
type histogram struct {
	count   uint64
	sum     float64
	uppers  []float64
	buckets []uint64
}

func registrationHistogram(b *testing.B) histogram {
	b.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "directlb_target_registration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			h := m.GetHistogram()
			out := histogram{count: h.GetSampleCount(), sum: h.GetSampleSum()}
			for _, bk := range h.GetBucket() {
				out.uppers = append(out.uppers, bk.GetUpperBound())
				out.buckets = append(out.buckets, bk.GetCumulativeCount())
			}
			return out
		}
	}
	b.Fatal("directlb_target_registration_seconds is not registered")
	return histogram{}
}

// sub is the observations made between before and h.
func (h histogram) sub(before histogram) histogram {
	out := histogram{count: h.count - before.count, sum: h.sum - before.sum, uppers: h.uppers}
	for i, c := range h.buckets {
		if i < len(before.buckets) {
			c -= before.buckets[i]
		}
		out.buckets = append(out.buckets, c)
	}
	return out
}

// quantileBound is the upper bound of the bucket holding quantile q.
func (h histogram) quantileBound(q float64) float64 {
	want := uint64(math.Ceil(q * float64(h.count)))
	for i, c := range h.buckets {
		if c >= want {
			return h.uppers[i]
		}
	}
	return math.Inf(1)
}
