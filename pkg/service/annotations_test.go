package service

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/cloud"
)

func defaults() Options {
	return Options{
		Scheme: SchemeInternetFacing,
		HealthCheck: cloud.HealthCheck{
			Protocol: "TCP", Port: TrafficPort, IntervalSeconds: 10, TimeoutSeconds: 6,
			HealthyThreshold: 3, UnhealthyThreshold: 3,
		},
		DeregistrationDelaySeconds: 20,
		ReadinessGate:              true,
	}
}

// parseAnnotationsCase is one Service's annotations and the Options, or the
// problems, ParseAnnotations should give.
type parseAnnotationsCase struct {
	name     string
	in       map[string]string
	want     func(*Options)
	problems []FieldError
}

var parseAnnotationsCases = []parseAnnotationsCase{
	{name: "none", in: nil, want: func(*Options) {}},
	{
		name: "all set",
		in: map[string]string{
			AnnotationDirectAccess: "true", AnnotationScheme: "internal",
			AnnotationHCProtocol: "HTTP", AnnotationHCPort: "8081", AnnotationHCPath: "/healthz",
			AnnotationHCInterval: "30", AnnotationHCTimeout: "5", AnnotationHCHealthyThreshold: "2",
			AnnotationHCUnhealthyThreshold: "10", AnnotationDeregistrationDelay: "0",
			AnnotationReadinessGate: "false",
		},
		want: func(o *Options) {
			o.DirectAccess = true
			o.Scheme = SchemeInternal
			o.HealthCheck = cloud.HealthCheck{Protocol: "HTTP", Port: "8081", Path: "/healthz",
				IntervalSeconds: 30, TimeoutSeconds: 5, HealthyThreshold: 2, UnhealthyThreshold: 10}
			o.DeregistrationDelaySeconds = 0
			o.ReadinessGate = false
		},
	},
	{
		name: "http gets a default path",
		in:   map[string]string{AnnotationHCProtocol: "HTTP"},
		want: func(o *Options) { o.HealthCheck.Protocol = "HTTP"; o.HealthCheck.Path = "/" },
	},
	{
		name: "short interval shrinks the default timeout",
		in:   map[string]string{AnnotationHCInterval: "5"},
		want: func(o *Options) { o.HealthCheck.IntervalSeconds = 5; o.HealthCheck.TimeoutSeconds = 4 },
	},
	{
		name: "traffic-port explicitly",
		in:   map[string]string{AnnotationHCPort: "traffic-port"},
		want: func(*Options) {},
	},
	{
		name: "every error is reported",
		in: map[string]string{
			AnnotationDirectAccess: "yes", AnnotationScheme: "public", AnnotationHCProtocol: "tcp",
			AnnotationHCPort: "70000", AnnotationHCPath: "/x", AnnotationHCInterval: "4",
			AnnotationHCHealthyThreshold: "11", AnnotationHCUnhealthyThreshold: "one",
			AnnotationDeregistrationDelay: "-1", AnnotationReadinessGate: "off",
		},
		problems: []FieldError{
			{AnnotationDirectAccess, "yes", `allowed values are "true" and "false"`},
			{AnnotationScheme, "public", `allowed values are "internet-facing", "internal"`},
			{AnnotationHCProtocol, "tcp", `allowed values are "TCP", "HTTP"`},
			{AnnotationHCPort, "70000", `must be "traffic-port" or a port number from 1 to 65535`},
			{AnnotationHCInterval, "4", "must be a whole number from 5 to 300"},
			{AnnotationHCHealthyThreshold, "11", "must be a whole number from 2 to 10"},
			{AnnotationHCUnhealthyThreshold, "one", "must be a whole number from 2 to 10"},
			{AnnotationDeregistrationDelay, "-1", "must be a whole number from 0 to 3600"},
			{AnnotationReadinessGate, "off", `allowed values are "true" and "false"`},
			{AnnotationHCPath, "/x", `is only allowed when service.directlb.io/healthcheck-protocol is "HTTP"`},
		},
	},
	{
		name: "timeout not below interval, bad path",
		in: map[string]string{AnnotationHCProtocol: "HTTP", AnnotationHCPath: "healthz",
			AnnotationHCInterval: "10", AnnotationHCTimeout: "10"},
		problems: []FieldError{
			{AnnotationHCPath, "healthz", `must be an absolute URL path (start with "/", no spaces, at most 1024 characters)`},
			{AnnotationHCTimeout, "10", "must be less than the health-check interval (10 seconds)"},
		},
	},
}

func TestParseAnnotations(t *testing.T) {
	for _, tt := range parseAnnotationsCases {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAnnotations(tt.in)
			if tt.problems != nil {
				var ic *InvalidConfigError
				ok := errors.As(err, &ic)
				if !ok {
					t.Fatalf("err = %v, want *InvalidConfigError", err)
				}
				if diff := cmp.Diff(tt.problems, ic.Problems); diff != "" {
					t.Errorf("problems (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			tt.want(&want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFieldErrorMessage(t *testing.T) {
	err := &InvalidConfigError{Problems: []FieldError{
		{AnnotationScheme, "public", `allowed values are "internet-facing", "internal"`},
		{AnnotationHCInterval, "4", "must be a whole number from 5 to 300"},
	}}
	want := `service.directlb.io/scheme: invalid value "public": allowed values are "internet-facing", "internal"; ` +
		`service.directlb.io/healthcheck-interval: invalid value "4": must be a whole number from 5 to 300`
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
