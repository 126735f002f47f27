package proxy

import (
	"slices"
	"strings"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// NotProgrammed is a Service whose last write into the datapath failed (a
// full map, say): it keeps what was programmed for it before and is
// retried after FailedRetryPeriod.
type NotProgrammed struct {
	Service string `json:"service"`
	Error   string `json:"error"`
}

// NotProgrammed lists the Services not programmed as of the last sync,
// sorted by name, with their errors. Safe from any goroutine.
func (p *Proxier) NotProgrammed() []NotProgrammed {
	p.notProgrammedMu.Lock()
	defer p.notProgrammedMu.Unlock()
	return slices.Clone(p.notProgrammed)
}

// reportFailures tells about the changes of the failed set since prev, once
// per failure episode: a Service that starts failing is logged and gets a
// Warning NotProgrammed event naming this node and the error; one that
// fits again is logged and gets a Normal Programmed event (none if it was
// deleted meanwhile). Retries that fail again say nothing more; the
// current error is on /debug/services. Sync loop only.
func (p *Proxier) reportFailures(prev map[types.NamespacedName]error) {
	list := make([]NotProgrammed, 0, len(p.failed))
	for name, err := range p.failed {
		list = append(list, NotProgrammed{Service: name.String(), Error: err.Error()})
		if _, known := prev[name]; known {
			continue
		}
		p.cfg.Logger.Error("program service", zap.String("service", name.String()), zap.Error(err))
		p.event(name, v1.EventTypeWarning, ReasonNotProgrammed, "node %s: %v", p.cfg.NodeName, err)
	}
	for name := range prev {
		if _, still := p.failed[name]; still {
			continue
		}
		p.cfg.Logger.Info("programmed service after earlier failures", zap.String("service", name.String()))
		p.event(name, v1.EventTypeNormal, ReasonProgrammed, "node %s: programmed after earlier failures", p.cfg.NodeName)
	}
	slices.SortFunc(list, func(a, b NotProgrammed) int { return strings.Compare(a.Service, b.Service) })
	p.cfg.Metrics.ServicesNotProgrammed.Set(float64(len(list)))
	p.notProgrammedMu.Lock()
	p.notProgrammed = list
	p.notProgrammedMu.Unlock()
}

// event records an event on the Service, if there is a recorder and the
// Service still exists.
func (p *Proxier) event(name types.NamespacedName, eventtype, reason, note string, args ...any) {
	if p.cfg.Recorder == nil {
		return
	}
	svc, err := p.services.Services(name.Namespace).Get(name.Name)
	if err != nil {
		return
	}
	p.cfg.Recorder.Eventf(svc, nil, eventtype, reason, "Program", note, args...)
}
