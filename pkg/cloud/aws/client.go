package aws

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/directlb/directlb/pkg/cloud"
)

// Client implements cloud.LoadBalancers on ELBv2 and
// cloud.NetworkInterfaces on EC2. ELB and EC2 are the configured SDK
// clients; both share the retryer, rate limits and metrics.
type Client struct {
	ELB      *elb.Client
	EC2      *ec2.Client
	pageSize int32
	subnets  []string
}

var _ cloud.LoadBalancers = (*Client)(nil)

// New builds the clients: default credential chain (or cfg.Credentials),
// region, endpoint override, the SDK's standard retryer for throttling and
// 5xx, client-side per-operation rate limits and Prometheus metrics.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RateLimits == nil {
		cfg.RateLimits = DefaultRateLimits()
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(cfg.Region),
		config.WithRetryer(func() awssdk.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				// The retry quota would fail calls fast under sustained
				// throttling; the per-operation limits below pace us instead.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	if f := cfg.SharedCredentialsFile; f != "" {
		// The SDK skips a shared file that does not exist and goes on
		// down the chain (to the instance metadata service): say so now.
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("shared credentials file: %w", err)
		}
		opts = append(opts, config.WithSharedCredentialsFiles([]string{f}))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load aws config: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	limiters := map[string]*rate.Limiter{}
	for op, l := range cfg.RateLimits {
		if l.Rate > 0 {
			limiters[op] = rate.NewLimiter(rate.Limit(l.Rate), l.Burst)
		}
	}
	awsCfg.APIOptions = append(awsCfg.APIOptions, func(stack *middleware.Stack) error {
		return addMiddleware(stack, m, limiters)
	})
	c := &Client{pageSize: cfg.PageSize, subnets: cfg.Subnets}
	c.ELB = elb.NewFromConfig(awsCfg, func(o *elb.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = awssdk.String(cfg.Endpoint)
		}
	})
	c.EC2 = ec2.NewFromConfig(awsCfg, func(o *ec2.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = awssdk.String(cfg.Endpoint)
		}
	})
	return c, nil
}

type metrics struct {
	calls, errors, throttled *prometheus.CounterVec
	latency                  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "directlb_cloud_api_calls_total",
			Help: "Cloud API calls by operation (one per call, retries included in it).",
		}, []string{"operation"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "directlb_cloud_api_errors_total",
			Help: "Cloud API calls that failed after retries, by operation and error code.",
		}, []string{"operation", "code"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "directlb_cloud_api_throttled_total",
			Help: "Cloud API attempts answered with a throttling error, by operation.",
		}, []string{"operation"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "directlb_cloud_api_call_duration_seconds",
			Help:    "Cloud API call duration including retries and client-side rate limiting, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}, []string{"operation"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.calls, m.errors, m.throttled, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register cloud api metrics: %w", err)
			}
		}
	}
	return m, nil
}

// addMiddleware puts metrics around the whole call (initialize step) and the
// rate limiter and throttle counter around each attempt (after Retry).
func addMiddleware(stack *middleware.Stack, m *metrics, limiters map[string]*rate.Limiter) error {
	err := stack.Initialize.Add(middleware.InitializeMiddlewareFunc("directlbMetrics",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			op := awsmiddleware.GetOperationName(ctx)
			start := time.Now()
			out, md, err := next.HandleInitialize(ctx, in)
			m.calls.WithLabelValues(op).Inc()
			m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
			if err != nil {
				m.errors.WithLabelValues(op, errorCode(err)).Inc()
			}
			return out, md, err
		}), middleware.Before)
	if err != nil {
		return err
	}
	return stack.Finalize.Insert(middleware.FinalizeMiddlewareFunc("directlbAttempt",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			op := awsmiddleware.GetOperationName(ctx)
			if l := limiters[op]; l != nil {
				if err := l.Wait(ctx); err != nil {
					return middleware.FinalizeOutput{}, middleware.Metadata{}, fmt.Errorf("client rate limit %s: %w", op, err)
				}
			}
			out, md, err := next.HandleFinalize(ctx, in)
			if err != nil && isThrottle(err) {
				m.throttled.WithLabelValues(op).Inc()
			}
			return out, md, err
		}), "Retry", middleware.After)
}

func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "NetworkError"
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "Canceled"
	}
	return "Unknown"
}

func isThrottle(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		_, ok := retry.DefaultThrottleErrorCodes[ae.ErrorCode()]
		return ok
	}
	return false
}

var notFoundCodes = map[string]bool{
	"LoadBalancerNotFound": true,
	"TargetGroupNotFound":  true,
	"ListenerNotFound":     true,
	// EC2
	"InvalidNetworkInterfaceID.NotFound": true,
}

// mapError turns an SDK error into a *cloud.APIError, wrapping
// cloud.ErrNotFound for the not-found codes.
func mapError(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", op, err)
	}
	ae := &cloud.APIError{Op: op}
	var sae smithy.APIError
	var re *smithyhttp.ResponseError
	switch {
	case errors.As(err, &sae):
		ae.Code, ae.Message = sae.ErrorCode(), sae.ErrorMessage()
		_, throttle := retry.DefaultThrottleErrorCodes[ae.Code]
		ae.Retryable = throttle || sae.ErrorFault() == smithy.FaultServer
		if errors.As(err, &re) && re.HTTPStatusCode() >= 500 {
			ae.Retryable = true
		}
	default:
		ae.Code, ae.Message, ae.Retryable = "RequestError", err.Error(), true
		if errors.As(err, &re) && re.HTTPStatusCode() >= 400 && re.HTTPStatusCode() < 500 {
			ae.Retryable = false
		}
	}
	if ae.Code == "" {
		ae.Code = "Unknown"
	}
	if notFoundCodes[ae.Code] {
		return fmt.Errorf("%w: %w", cloud.ErrNotFound, ae)
	}
	return ae
}
