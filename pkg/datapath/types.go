// Package datapath holds directlb's socket-level ClusterIP load balancer: the
// BPF programs (bpf/), the maps they read, and LoadBalancer, which programs a
// set of Services into those maps in an order that never shows a lookup a
// half-written Service.
package datapath

import (
	"fmt"
	"net/netip"
	"time"
)

// Protocol is an IP protocol number as the BPF maps store it.
type Protocol uint8

// Protocols the datapath translates.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Frontend is what a client connects to: a ClusterIP (or externalIP, or
// load-balancer IP), a port and a protocol; or, with ScopeNodePort, a
// NodePort on every node address.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto Protocol
	Scope Scope
}

// Scope says which destinations a frontend stands for.
type Scope uint8

const (
	// ScopeAddress is a frontend at its own address: a ClusterIP, an
	// externalIP or a load-balancer IP.
	ScopeAddress Scope = 0
	// ScopeNodePort is a NodePort: address 0.0.0.0 in the frontend, and
	// every node address (SetNodeAddresses) at its port.
	ScopeNodePort Scope = 1
	// ScopeExternal marks a frontend for traffic from outside the node
	// (the tc programs on --nodeport-devices), with the backends
	// externalTrafficPolicy selects: ScopeExternal alone at an externalIP
	// or load-balancer IP, ScopeExternal|ScopeNodePort for a NodePort on
	// this node's addresses.
	ScopeExternal Scope = 2
)

// NodePortFrontend is the frontend of a NodePort: the port on every node
// address.
func NodePortFrontend(port uint16, proto Protocol) Frontend {
	return Frontend{Addr: netip.IPv4Unspecified(), Port: port, Proto: proto, Scope: ScopeNodePort}
}

// IsNodePort reports whether f is a NodePort frontend (NodePortFrontend).
func (f Frontend) IsNodePort() bool { return f.Scope&ScopeNodePort != 0 }

// External returns f for traffic from outside the node (ScopeExternal).
func (f Frontend) External() Frontend {
	f.Scope |= ScopeExternal
	return f
}

func (f Frontend) String() string {
	ext := ""
	if f.Scope&ScopeExternal != 0 {
		ext = "external:"
	}
	if f.IsNodePort() {
		return fmt.Sprintf("%snodeport:%d/%s", ext, f.Port, f.Proto)
	}
	if ext != "" {
		return fmt.Sprintf("%s%s/%s", ext, netip.AddrPortFrom(f.Addr, f.Port), f.Proto)
	}
	if f.IsAddress() {
		return fmt.Sprintf("%s/any", f.Addr)
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), f.Proto)
}

// AddressFrontend is the address entry of a ClusterIP: port 0, protocol 0.
// Programmed (with no backends) next to the Service's frontends, it makes
// a connect or datagram to a port the ClusterIP does not serve fail with
// ECONNREFUSED, as kube-proxy rejects it, instead of leaving on the
// default route untranslated.
func AddressFrontend(a netip.Addr) Frontend { return Frontend{Addr: a} }

// IsAddress reports whether f is an address entry (AddressFrontend).
func (f Frontend) IsAddress() bool { return f.Port == 0 && f.Proto == 0 && f.Scope == ScopeAddress }

// NodeAddressFlags say what a node address (SetNodeAddresses) is.
type NodeAddressFlags uint8

const (
	// NodeAddressLocal is an address of this node.
	NodeAddressLocal NodeAddressFlags = 1 << 0
	// NodeAddressRemote is another node's address. This node's sockets
	// reach its NodePorts through the socket hooks too.
	NodeAddressRemote NodeAddressFlags = 1 << 1
)

// Backend is one endpoint as the backends map stores it.
type Backend struct {
	Addr  netip.Addr
	Port  uint16
	Proto Protocol
}

func (b Backend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(b.Addr, b.Port), b.Proto)
}

// Service is one frontend and the backends that serve it, as the control
// plane wants it programmed.
type Service struct {
	Frontend Frontend
	// Backends in the order they should fill the slots; an empty list
	// programs a Service that refuses connections at once.
	Backends []netip.AddrPort
	// AffinityTimeout > 0 turns on sessionAffinity ClientIP: a client (its
	// network namespace) keeps its backend while it keeps using it within
	// this time.
	AffinityTimeout time.Duration
	// Drop, with no Backends, makes connects and datagrams fail as if
	// dropped (ETIMEDOUT at once) instead of refused: kube-proxy drops
	// traffic for internalTrafficPolicy Local when the Service has
	// endpoints, but none on this node.
	Drop bool
	// SNAT, for an external frontend (ScopeExternal), rewrites the
	// client's address to this node's when the backend is on another node
	// (externalTrafficPolicy Cluster); without it the client's address is
	// kept (Local, whose backends are all on this node).
	SNAT bool
}

// BackendID names a backend in the backends map; 0 is never used.
type BackendID uint32

// ServiceID names a Service (one frontend) in the maps; 0 is never used. It
// is the reverse-NAT index: socket entries remember it to check that the
// Service they were made for still exists.
type ServiceID uint32

// ServiceKey is a key of the services map: slot 0 is the master entry,
// slots 1..Count hold the backends.
type ServiceKey struct {
	Frontend Frontend
	Slot     uint16
}

// Service value flags.
const (
	// FlagAffinity marks a Service with sessionAffinity ClientIP.
	FlagAffinity uint8 = 1 << 0
	// FlagDrop marks a Service without backends whose traffic is dropped
	// rather than refused (Service.Drop).
	FlagDrop uint8 = 1 << 1
	// FlagSNAT marks an external frontend whose traffic to another node's
	// backend is SNATed to this node (Service.SNAT).
	FlagSNAT uint8 = 1 << 2
)

// ServiceValue is a value of the services map. In the master slot, Count is
// the number of backends and AffinityTimeout (seconds) applies with
// FlagAffinity; in slots 1..Count, BackendID names the backend.
type ServiceValue struct {
	BackendID       BackendID
	ServiceID       ServiceID
	AffinityTimeout uint32
	Count           uint16
	Flags           uint8
}

// AffinityMatchKey says that a backend serves a Service with affinity; an
// affinity entry is honoured only while its match exists.
type AffinityMatchKey struct {
	BackendID BackendID
	ServiceID ServiceID
}
