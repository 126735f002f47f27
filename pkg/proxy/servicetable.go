package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/directlb/directlb/pkg/datapath"
)

// TableEntry is one programmed frontend as the maps hold it.
type TableEntry struct {
	Frontend datapath.Frontend `json:"-"`
	// Name is the frontend as datapath prints it (10.96.0.10:80/TCP,
	// nodeport:30080/TCP, external:..., 10.96.0.10/any).
	Name string `json:"frontend"`
	// Service is the Service the agent programs it for; empty when no
	// current Service wants it (left by an earlier run, or a Service just
	// deleted).
	Service         string   `json:"service,omitempty"`
	ID              uint32   `json:"id"`
	AffinityTimeout uint32   `json:"affinityTimeoutSeconds,omitempty"`
	Flags           []string `json:"flags,omitempty"`
	Backends        []string `json:"backends"`
	// Missing counts slots whose backend is not in the maps (a write in
	// progress, or damage).
	Missing int `json:"missingBackends,omitempty"`
}

// ServiceDumper reads the Service maps back; datapath.Maps is one, and so
// are the pinned maps opened read-only (datapath.OpenPinned).
type ServiceDumper interface {
	DumpServices(fn func(datapath.ServiceKey, datapath.ServiceValue)) error
	DumpBackends(fn func(datapath.BackendID, datapath.Backend)) error
}

// ReadServiceTable reads every programmed frontend and its backends from
// the maps (the pinned BPF maps, or a fake), sorted by frontend.
func ReadServiceTable(m ServiceDumper) ([]TableEntry, error) {
	masters := map[datapath.Frontend]datapath.ServiceValue{}
	slots := map[datapath.ServiceKey]datapath.BackendID{}
	if err := m.DumpServices(func(k datapath.ServiceKey, v datapath.ServiceValue) {
		if k.Slot == 0 {
			masters[k.Frontend] = v
		} else {
			slots[k] = v.BackendID
		}
	}); err != nil {
		return nil, fmt.Errorf("dump services: %w", err)
	}
	backends := map[datapath.BackendID]datapath.Backend{}
	if err := m.DumpBackends(func(id datapath.BackendID, b datapath.Backend) { backends[id] = b }); err != nil {
		return nil, fmt.Errorf("dump backends: %w", err)
	}
	out := make([]TableEntry, 0, len(masters))
	for fe, v := range masters {
		e := TableEntry{Frontend: fe, Name: fe.String(), ID: uint32(v.ServiceID), Backends: []string{}}
		if v.Flags&datapath.FlagAffinity != 0 {
			e.AffinityTimeout = v.AffinityTimeout
			e.Flags = append(e.Flags, "affinity")
		}
		if v.Flags&datapath.FlagDrop != 0 {
			e.Flags = append(e.Flags, "drop")
		}
		if v.Flags&datapath.FlagSNAT != 0 {
			e.Flags = append(e.Flags, "snat")
		}
		for s := uint16(1); s <= v.Count; s++ {
			b, ok := backends[slots[datapath.ServiceKey{Frontend: fe, Slot: s}]]
			if !ok {
				e.Missing++
				continue
			}
			e.Backends = append(e.Backends, b.String())
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b TableEntry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// WriteServiceTable prints the table, one frontend a line, in the manner
// of ipvsadm -Ln.
func WriteServiceTable(w io.Writer, entries []TableEntry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tSERVICE\tID\tFLAGS\tBACKENDS")
	for _, e := range entries {
		svc := e.Service
		if svc == "" {
			svc = "-"
		}
		flags := "-"
		if len(e.Flags) > 0 {
			flags = strings.Join(e.Flags, ",")
			if e.AffinityTimeout > 0 {
				flags += fmt.Sprintf("(%ds)", e.AffinityTimeout)
			}
		}
		bs := strings.Join(e.Backends, " ")
		if len(e.Backends) == 0 {
			bs = "(none)"
		}
		if e.Missing > 0 {
			bs += fmt.Sprintf(" (+%d missing)", e.Missing)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", e.Name, svc, e.ID, flags, bs)
	}
	return tw.Flush()
}

// ServiceTable is what /debug/services answers with ?o=json.
type ServiceTable struct {
	Frontends []TableEntry `json:"frontends"`
	// NotProgrammed are the Services whose last write failed, with the
	// error; what was programmed for them before is still in Frontends.
	NotProgrammed []NotProgrammed `json:"notProgrammed"`
}

// TableSource is where ServiceTableHandler learns the Service of each
// frontend and the Services not programmed; *Proxier is one.
type TableSource interface {
	Owners() map[datapath.Frontend]types.NamespacedName
	NotProgrammed() []NotProgrammed
}

// ServiceTableHandler serves the table read from maps at each request:
// text by default, JSON with ?o=json. src, if set, names the Service of
// each frontend and lists the Services not programmed.
func ServiceTableHandler(maps ServiceDumper, src TableSource) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entries, err := ReadServiceTable(maps)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		t := ServiceTable{Frontends: entries, NotProgrammed: []NotProgrammed{}}
		if src != nil {
			names := src.Owners()
			for i := range entries {
				if n, ok := names[entries[i].Frontend]; ok {
					entries[i].Service = n.String()
				}
			}
			t.NotProgrammed = src.NotProgrammed()
		}
		if r.URL.Query().Get("o") == "json" {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(t) // the client went away
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_ = WriteServiceTable(w, entries) // the client went away
		_ = writeNotProgrammed(w, t.NotProgrammed)
	})
}

// writeNotProgrammed prints the Services not programmed after the table,
// if there are any.
func writeNotProgrammed(w io.Writer, list []NotProgrammed) error {
	if len(list) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNOT PROGRAMMED\tERROR")
	for _, n := range list {
		fmt.Fprintf(tw, "%s\t%s\n", n.Service, n.Error)
	}
	return tw.Flush()
}

// Owners returns the Service each frontend is wanted for, computed from the
// informers' current Services and EndpointSlices (not what the sync loop
// last programmed, which it keeps to itself).
func (p *Proxier) Owners() map[datapath.Frontend]types.NamespacedName {
	out := map[datapath.Frontend]types.NamespacedName{}
	list, err := p.services.List(labels.Everything())
	if err != nil {
		return out
	}
	for _, svc := range list {
		name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		eps := p.slicesOf(name)
		node := p.thisNode()
		d := Desired(svc, eps, node)
		if p.cfg.NorthSouth {
			d = append(d, DesiredNorthSouth(svc, eps, node)...)
		}
		for _, s := range d {
			out[s.Frontend] = name
		}
	}
	return out
}
