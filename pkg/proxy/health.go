package proxy

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Health tracks whether the datapath keeps up with the apiserver, the way
// kube-proxy's healthz server does: it is unhealthy when a change has been
// waiting longer than the timeout without being programmed.
type Health struct {
	mu          sync.Mutex
	timeout     time.Duration
	now         func() time.Time
	lastUpdated time.Time
	oldestQueue time.Time
	// notEligible says why the node is not eligible (kube-proxy's
	// nodeEligible false); empty while it is, and while its Node is not
	// known yet: unknown is not "going away".
	notEligible string
}

// ToBeDeletedTaint is the taint cluster-autoscaler puts on a node it is
// about to remove; kube-proxy's /healthz then reports nodeEligible false.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// SyncNode records whether this agent's Node is eligible for load-balancer
// traffic, as kube-proxy decides it: not when the Node is being deleted or
// carries ToBeDeletedTaint. /healthz then answers 503, so external load
// balancers that health-check kube-proxy's port drain the node.
func (h *Health) SyncNode(node *v1.Node) {
	reason := ""
	switch {
	case node == nil:
	case node.DeletionTimestamp != nil:
		reason = "node is being deleted"
	default:
		for _, t := range node.Spec.Taints {
			if t.Key == ToBeDeletedTaint {
				reason = "node has taint " + ToBeDeletedTaint
				break
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notEligible = reason
}

// NodeEligible reports whether the node is eligible, and why not.
func (h *Health) NodeEligible() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.notEligible == "", h.notEligible
}

// NewHealth returns a Health that turns unhealthy when a queued change waits
// longer than timeout. It starts with the initial sync queued.
func NewHealth(timeout time.Duration) *Health {
	h := &Health{timeout: timeout, now: time.Now}
	h.oldestQueue = h.now()
	return h
}

// QueuedUpdate records that a change is waiting to be programmed.
func (h *Health) QueuedUpdate() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestQueue.IsZero() {
		h.oldestQueue = h.now()
	}
}

// Updated records that everything queued so far is programmed.
func (h *Health) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = h.now()
	h.oldestQueue = time.Time{}
}

// Status returns whether the agent is healthy, with the times kube-proxy
// reports.
func (h *Health) Status() (healthy bool, lastUpdated, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now = h.now()
	healthy = h.oldestQueue.IsZero() || now.Sub(h.oldestQueue) < h.timeout
	return healthy, h.lastUpdated, now
}

type healthBody struct {
	LastUpdated  string `json:"lastUpdated"`
	CurrentTime  string `json:"currentTime"`
	NodeEligible *bool  `json:"nodeEligible,omitempty"`
}

// ServeHTTP answers /healthz and /livez with kube-proxy's JSON body:
// 200 when healthy, 503 when a change has waited too long; /healthz also
// 503 when the node is not eligible (SyncNode).
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	healthy, last, now := h.Status()
	body := healthBody{LastUpdated: last.String(), CurrentTime: now.String()}
	if r.URL.Path == "/healthz" {
		// /healthz is what external load balancers probe: a node on its
		// way out is unhealthy there, not on /livez (no restart for it).
		eligible, _ := h.NodeEligible()
		body.NodeEligible = &eligible
		healthy = healthy && eligible
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(body) // the client went away; nothing to tell it
}
