// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// directlb socket-level load balancer for Services: ClusterIPs, externalIPs,
// load-balancer IPs and NodePorts on node addresses.
//
// The programs run on cgroup v2 sock_addr hooks. connect4 and sendmsg4
// translate a frontend to one of its backends once, when the
// application connects (TCP, connected UDP) or sends (unconnected UDP).
// recvmsg4 and getpeername4 translate the backend back to the frontend so
// the application only ever sees the address it dialled as its peer.
// connect6, sendmsg6, recvmsg6 and getpeername6 do the same for an IPv6
// socket that addresses an IPv4 Service as ::ffff:a.b.c.d.
//
// Map layout (kept in step with pkg/datapath/types.go):
//   dlb_svc4        (frontend, slot) -> service value. Slot 0 is the master:
//                   backend count, service ID, affinity timeout. Slots 1..N
//                   hold backend IDs. Writers fill backends and slots first
//                   and the master last, so a reader never sees a master
//                   whose slots are missing. A key with port 0 and protocol
//                   0 is a ClusterIP's address entry: the address is a
//                   Service's, so a port it does not serve is refused. A
//                   key with scope SCOPE_NODEPORT and address 0 is a
//                   NodePort: it serves that port on every address in
//                   dlb_nodeaddr4.
//   dlb_nodeaddr4   node address -> NODEADDR_* flags: the addresses whose
//                   NodePorts this node's sockets reach (this node's and
//                   the other nodes', as nodePortAddresses selects them).
//   dlb_backends4   backend ID -> address, port, protocol.
//   dlb_revnat4     (socket cookie, backend address, port) -> frontend; LRU.
//   dlb_affinity4   (client netns cookie, service ID) -> backend ID, last use; LRU.
//   dlb_affmatch4   (backend ID, service ID) -> 1 while that backend serves
//                   the service; an affinity entry is only honoured if its
//                   backend still matches.
//
// IPv6 Services would use the same layout with 16-byte addresses; they are
// not programmed yet, so real IPv6 destinations pass untouched.
//
// Built with -mcpu=v3 for the compare-and-swap in pick_backend (BPF atomics,
// Linux 5.12+; the agent needs 5.18 for bpf_set_retval anyway).

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define SVC_FLAG_AFFINITY 0x1
// With no backends: drop (internalTrafficPolicy Local, endpoints only on
// other nodes) rather than refuse.
#define SVC_FLAG_DROP 0x2
// External scope: the source is rewritten to a node address
// (externalTrafficPolicy Cluster); without it the client's address is
// kept (Local).
#define SVC_FLAG_SNAT 0x4

// svc4_key.scope: SCOPE_NODEPORT keys have address 0 and stand for every
// node address. SCOPE_EXTERNAL keys are for traffic from outside the node
// (the tc programs), with the backends externalTrafficPolicy selects.
#define SCOPE_NODEPORT 0x1
#define SCOPE_EXTERNAL 0x2

// dlb_nodeaddr4 values.
#define NODEADDR_LOCAL 0x1  // an address of this node
#define NODEADDR_REMOTE 0x2 // another node's address

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

struct svc4_key {
	__be32 addr;
	__be16 port;
	__u16 slot;
	__u8 proto;
	__u8 scope;
	__u16 pad;
};

struct svc4_val {
	__u32 backend_id;       // slot > 0
	__u32 svc_id;           // service (reverse NAT) ID, all slots
	__u32 affinity_timeout; // seconds, master only
	__u16 count;            // backends, master only
	__u8 flags;
	__u8 pad;
};

struct backend4 {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct revnat4_key {
	__u64 cookie;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct revnat4_val {
	__be32 addr;
	__be16 port;
	__u8 scope; // the frontend's key scope: SCOPE_NODEPORT looks up address 0
	__u8 pad;
	__u32 svc_id;
};

struct affinity4_key {
	__u64 client;
	__u32 svc_id;
	__u32 pad;
};

struct affinity4_val {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

struct affmatch_key {
	__u32 backend_id;
	__u32 svc_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc4_key);
	__type(value, struct svc4_val);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_svc4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend4);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_backends4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_nodeaddr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct revnat4_key);
	__type(value, struct revnat4_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_revnat4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity4_key);
	__type(value, struct affinity4_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_affinity4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct affmatch_key);
	__type(value, __u8);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_affmatch4 SEC(".maps");

// dlb_sticky4 keeps an unconnected UDP socket's datagrams to one Service on
// one backend, as conntrack keeps a flow on its DNAT target: (socket
// cookie, service ID) -> the backend's slot and ID, and when the socket
// last sent. An entry holds while the same slot of the Service still has
// that backend and the socket sent within STICKY_TIMEOUT_NS; otherwise a
// new backend is picked. Connected sockets are translated once at connect
// and need no entry.
struct sticky4_key {
	__u64 cookie;
	__u32 svc_id;
	__u32 pad;
};

struct sticky4_val {
	__u64 last_used_ns;
	__u32 backend_id;
	__u16 slot;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sticky4_key);
	__type(value, struct sticky4_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_sticky4 SEC(".maps");

// The idle time after which an unconnected socket's next datagram picks a
// backend afresh: the kernel's UDP conntrack timeout for a flow that has
// not been answered (nf_conntrack_udp_timeout, 30 s). The agent may set it
// before loading.
volatile const __u64 sticky_timeout_ns = 30ULL * 1000000000ULL;

static __always_inline struct svc4_val *lookup_master(__be32 addr, __be16 port, __u8 proto, __u8 scope)
{
	struct svc4_key key = {
		.addr = scope & SCOPE_NODEPORT ? 0 : addr,
		.port = port,
		.proto = proto,
		.scope = scope,
	};
	return bpf_map_lookup_elem(&dlb_svc4, &key);
}

// affinity_backend is the backend of an affinity entry while that backend
// still serves the Service.
static __always_inline struct backend4 *affinity_backend(__u32 id, __u32 svc_id)
{
	struct affmatch_key mkey = {
		.backend_id = id,
		.svc_id = svc_id,
	};

	if (!bpf_map_lookup_elem(&dlb_affmatch4, &mkey))
		return NULL;
	return bpf_map_lookup_elem(&dlb_backends4, &id);
}

// pick_backend chooses a backend for one connect or datagram. With
// sessionAffinity ClientIP the client's entry decides while it is fresh and
// its backend still serves; many sockets of one client run this at once on
// several CPUs, so:
//   - the clock is read after the entry is looked up, and an entry another
//     CPU touched after our clock read (its time ahead of ours) counts as
//     fresh, not as 2^64 ns old;
//   - a first choice is inserted with BPF_NOEXIST: of two sockets racing to
//     make the entry, the loser takes the winner's backend;
//   - a stale entry's backend is replaced with a compare-and-swap on it, so
//     again only one replacement wins and the others follow it.
static __always_inline struct backend4 *pick_backend(__u64 client,
						     struct svc4_key *key,
						     const struct svc4_val *master,
						     __u32 *backend_id)
{
	struct affinity4_key akey = {};
	struct affinity4_val *aval = NULL;
	struct backend4 *be;
	struct svc4_val *slot;
	__u64 now = 0;
	__u32 seen = 0;
	__u32 id;

	if (master->flags & SVC_FLAG_AFFINITY) {
		__u64 last, timeout = (__u64)master->affinity_timeout * 1000000000ULL;

		akey.client = client;
		akey.svc_id = master->svc_id;
		aval = bpf_map_lookup_elem(&dlb_affinity4, &akey);
		now = bpf_ktime_get_ns();
		if (aval) {
			last = READ_ONCE(aval->last_used_ns);
			seen = READ_ONCE(aval->backend_id);
			if (last >= now || now - last <= timeout) {
				be = affinity_backend(seen, master->svc_id);
				if (be) {
					if (now > last)
						WRITE_ONCE(aval->last_used_ns, now);
					*backend_id = seen;
					return be;
				}
			}
		}
	}

	key->slot = (bpf_get_prandom_u32() % master->count) + 1;
	slot = bpf_map_lookup_elem(&dlb_svc4, key);
	if (!slot)
		return NULL;
	id = slot->backend_id;
	be = bpf_map_lookup_elem(&dlb_backends4, &id);
	if (!be)
		return NULL;

	if (master->flags & SVC_FLAG_AFFINITY) {
		__u32 winner = id;

		if (!aval) {
			struct affinity4_val nval = {
				.last_used_ns = now,
				.backend_id = id,
			};
			if (bpf_map_update_elem(&dlb_affinity4, &akey, &nval, BPF_NOEXIST) == -EEXIST) {
				aval = bpf_map_lookup_elem(&dlb_affinity4, &akey);
				if (aval)
					winner = READ_ONCE(aval->backend_id);
			}
		} else {
			winner = __sync_val_compare_and_swap(&aval->backend_id, seen, id);
			if (winner == seen) {
				winner = id;
				WRITE_ONCE(aval->last_used_ns, now);
			}
		}
		if (winner != id) {
			struct backend4 *wbe = affinity_backend(winner, master->svc_id);

			if (wbe) {
				id = winner;
				be = wbe;
			}
		}
	}
	*backend_id = id;
	return be;
}

// sticky_pick is pick_backend for an unconnected UDP datagram of a Service
// without sessionAffinity: the socket's dlb_sticky4 entry decides while its
// slot still holds its backend and it is fresh; else a backend is picked
// and remembered.
static __always_inline struct backend4 *sticky_pick(__u64 client, __u64 cookie,
						    struct svc4_key *key,
						    const struct svc4_val *master,
						    __u32 *backend_id)
{
	struct sticky4_key skey = {
		.cookie = cookie,
		.svc_id = master->svc_id,
	};
	struct sticky4_val sval = {};
	struct sticky4_val *cur;
	struct backend4 *be;
	struct svc4_val *slot;
	__u64 now, last;

	cur = bpf_map_lookup_elem(&dlb_sticky4, &skey);
	now = bpf_ktime_get_ns();
	if (cur) {
		__u32 id = READ_ONCE(cur->backend_id);
		__u16 s = READ_ONCE(cur->slot);

		last = READ_ONCE(cur->last_used_ns);
		if (s >= 1 && s <= master->count && (last >= now || now - last <= sticky_timeout_ns)) {
			key->slot = s;
			slot = bpf_map_lookup_elem(&dlb_svc4, key);
			if (slot && slot->backend_id == id && slot->svc_id == master->svc_id) {
				be = bpf_map_lookup_elem(&dlb_backends4, &id);
				if (be) {
					if (now > last)
						WRITE_ONCE(cur->last_used_ns, now);
					*backend_id = id;
					return be;
				}
			}
		}
	}
	be = pick_backend(client, key, master, backend_id);
	if (!be)
		return NULL;
	sval.last_used_ns = now;
	sval.backend_id = *backend_id;
	sval.slot = key->slot;
	bpf_map_update_elem(&dlb_sticky4, &skey, &sval, BPF_ANY);
	return be;
}

// lb4_translate picks a backend for the IPv4 destination *addr and the
// context's port: a ClusterIP, externalIP or load-balancer IP frontend
// (addr, port), else, when addr is a node address, the NodePort frontend
// (0, port, SCOPE_NODEPORT). It returns 1 to let the call go on (with
// *addr and the port rewritten when it is a Service) and 0 to refuse it
// (the errno set with bpf_set_retval):
//   - ECONNREFUSED for a Service without endpoints, and for a port the
//     ClusterIP does not serve (kube-proxy's reject);
//   - ETIMEDOUT for internalTrafficPolicy Local with endpoints only on other
//     nodes: kube-proxy drops that traffic, so the client ends in a
//     timeout; a socket hook cannot hold the call, so it fails at once
//     with the timeout the drop would end in.
// The IPv4 hooks and the IPv6 hooks (for ::ffff:a.b.c.d) share it.
//
// sendmsg is set for an unconnected datagram: without sessionAffinity its
// socket keeps its backend (dlb_sticky4).
static __always_inline int lb4_translate(struct bpf_sock_addr *ctx, __be32 *addr, __u8 proto, int sendmsg)
{
	struct svc4_key key = {
		.addr = *addr,
		.port = (__be16)ctx->user_port,
		.proto = proto,
	};
	struct revnat4_key rkey = {};
	struct revnat4_val rval = {};
	struct svc4_val *master;
	struct backend4 *be;
	__u32 backend_id = 0;

	master = bpf_map_lookup_elem(&dlb_svc4, &key);
	if (!master) {
		// Not a frontend. The address entry (port 0, protocol 0) says
		// the address is a ClusterIP, and this port is not one of its.
		struct svc4_key akey = {
			.addr = *addr,
		};
		if (bpf_map_lookup_elem(&dlb_svc4, &akey)) {
			bpf_set_retval(-ECONNREFUSED);
			return 0;
		}
		// A node address: its NodePorts. Any other port is the node's
		// own (sshd, the kubelet) and passes untouched.
		if (!bpf_map_lookup_elem(&dlb_nodeaddr4, addr))
			return 1;
		key.addr = 0;
		key.scope = SCOPE_NODEPORT;
		master = bpf_map_lookup_elem(&dlb_svc4, &key);
		if (!master)
			return 1;
	}
	if (master->count == 0) {
		bpf_set_retval(master->flags & SVC_FLAG_DROP ? -ETIMEDOUT : -ECONNREFUSED);
		return 0;
	}
	// The client is its network namespace (netns cookies are small
	// counters; the tc programs' clients, addresses, have bit 63 set).
	if (sendmsg && !(master->flags & SVC_FLAG_AFFINITY))
		be = sticky_pick(bpf_get_netns_cookie(ctx), bpf_get_socket_cookie(ctx), &key, master, &backend_id);
	else
		be = pick_backend(bpf_get_netns_cookie(ctx), &key, master, &backend_id);
	if (!be) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = be->addr;
	rkey.port = be->port;
	rval.addr = *addr;
	rval.port = (__be16)ctx->user_port;
	rval.scope = key.scope;
	rval.svc_id = master->svc_id;
	bpf_map_update_elem(&dlb_revnat4, &rkey, &rval, BPF_ANY);

	*addr = be->addr;
	ctx->user_port = be->port;
	return 1;
}

// lb4_reverse turns a backend (*addr and the context's port) back into the
// frontend the socket was translated from.
static __always_inline void lb4_reverse(struct bpf_sock_addr *ctx, __be32 *addr, __u8 proto)
{
	struct revnat4_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = *addr,
		.port = (__be16)ctx->user_port,
	};
	struct revnat4_val *rval;
	struct svc4_val *master;

	rval = bpf_map_lookup_elem(&dlb_revnat4, &rkey);
	if (!rval)
		return;
	// Only while the Service still exists with the same ID.
	master = lookup_master(rval->addr, rval->port, proto, rval->scope);
	if (!master || master->svc_id != rval->svc_id) {
		bpf_map_delete_elem(&dlb_revnat4, &rkey);
		return;
	}
	*addr = rval->addr;
	ctx->user_port = rval->port;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol == IPPROTO_TCP)
		return IPPROTO_TCP;
	if (ctx->protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0;
}

SEC("cgroup/connect4")
int dlb_connect4(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	__be32 addr = ctx->user_ip4;
	int ret;

	if (!proto)
		return 1;
	ret = lb4_translate(ctx, &addr, proto, 0);
	ctx->user_ip4 = addr;
	return ret;
}

SEC("cgroup/sendmsg4")
int dlb_sendmsg4(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	int ret;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	ret = lb4_translate(ctx, &addr, IPPROTO_UDP, 1);
	ctx->user_ip4 = addr;
	return ret;
}

SEC("cgroup/recvmsg4")
int dlb_recvmsg4(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	lb4_reverse(ctx, &addr, IPPROTO_UDP);
	ctx->user_ip4 = addr;
	return 1;
}

SEC("cgroup/getpeername4")
int dlb_getpeername4(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	__be32 addr = ctx->user_ip4;

	if (!proto)
		return 1;
	lb4_reverse(ctx, &addr, proto);
	ctx->user_ip4 = addr;
	return 1;
}

// The IPv6 hooks: an AF_INET6 socket (the JVM's default, and other
// dual-stack runtimes') reaches an IPv4 Service at ::ffff:a.b.c.d and runs
// these hooks, not the IPv4 ones. They translate the mapped address exactly
// as the IPv4 hooks translate a plain one, and keep it mapped. Real IPv6
// destinations pass untouched: no IPv6 Services are programmed.

static __always_inline int v4mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

SEC("cgroup/connect6")
int dlb_connect6(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	__be32 addr;
	int ret;

	if (!proto || !v4mapped(ctx))
		return 1;
	addr = ctx->user_ip6[3];
	ret = lb4_translate(ctx, &addr, proto, 0);
	ctx->user_ip6[3] = addr;
	return ret;
}

// A datagram to a mapped address normally leaves through the IPv4 path
// (sendmsg4 runs); sendmsg6 covers a kernel that hands it here.
SEC("cgroup/sendmsg6")
int dlb_sendmsg6(struct bpf_sock_addr *ctx)
{
	__be32 addr;
	int ret;

	if (ctx->protocol != IPPROTO_UDP || !v4mapped(ctx))
		return 1;
	addr = ctx->user_ip6[3];
	ret = lb4_translate(ctx, &addr, IPPROTO_UDP, 1);
	ctx->user_ip6[3] = addr;
	return ret;
}

SEC("cgroup/recvmsg6")
int dlb_recvmsg6(struct bpf_sock_addr *ctx)
{
	__be32 addr;

	if (ctx->protocol != IPPROTO_UDP || !v4mapped(ctx))
		return 1;
	addr = ctx->user_ip6[3];
	lb4_reverse(ctx, &addr, IPPROTO_UDP);
	ctx->user_ip6[3] = addr;
	return 1;
}

SEC("cgroup/getpeername6")
int dlb_getpeername6(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	__be32 addr;

	if (!proto || !v4mapped(ctx))
		return 1;
	addr = ctx->user_ip6[3];
	lb4_reverse(ctx, &addr, proto);
	ctx->user_ip6[3] = addr;
	return 1;
}

// ---------------------------------------------------------------------------
// Connected UDP sockets whose backend left: dlb_sock_destroy_udp runs over
// the UDP sockets of one network namespace (a BPF socket iterator; the
// agent runs it in every network namespace of its cgroup) and destroys each
// socket that the hooks above connected to a backend listed in
// dlb_sockdestroy4 for the Service the socket was translated from: its
// dlb_revnat4 entry (socket cookie, peer) names that Service. The socket's
// next operation fails with ECONNABORTED and the application reconnects,
// through connect4, to a backend that serves. Sockets that were not
// translated (no dlb_revnat4 entry) are left alone, even if their peer is
// the same address. Each destroyed socket's cookie is written to the
// iterator's output, so the agent can count them.

// These kernel types are read with CO-RE: only the fields used, matched by
// name against the running kernel's BTF.
struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct udp_sock;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

// The context of an iter/udp program (the kernel's bpf_iter__udp): fixed
// by the iterator's function prototype.
struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
};

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

struct sockdestroy4_key {
	__be32 addr;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
};

// dlb_sockdestroy4: (backend address, port, service ID) -> 1, written by
// the agent just before it runs the iterator and emptied after.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sockdestroy4_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} dlb_sockdestroy4 SEC(".maps");

#ifndef AF_INET
#define AF_INET 2
#endif
#define AF_INET6 10

SEC("iter/udp")
int dlb_sock_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct sock_common *sk = (struct sock_common *)ctx->udp_sk;
	struct sockdestroy4_key dkey = {};
	struct revnat4_key rkey = {};
	struct revnat4_val *rval;
	__u64 cookie;

	if (!sk)
		return 0;
	// An IPv4 socket, or an IPv6 one connected to ::ffff:a.b.c.d (the
	// kernel keeps the IPv4 peer in skc_daddr for both).
	if (sk->skc_family != AF_INET && sk->skc_family != AF_INET6)
		return 0;
	if (sk->skc_daddr == 0 || sk->skc_dport == 0)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	rkey.cookie = cookie;
	rkey.addr = sk->skc_daddr;
	rkey.port = sk->skc_dport;
	rval = bpf_map_lookup_elem(&dlb_revnat4, &rkey);
	if (!rval)
		return 0;
	dkey.addr = rkey.addr;
	dkey.port = rkey.port;
	dkey.svc_id = rval->svc_id;
	if (!bpf_map_lookup_elem(&dlb_sockdestroy4, &dkey))
		return 0;
	if (bpf_sock_destroy(sk) == 0)
		bpf_seq_write(ctx->meta->seq, &cookie, sizeof(cookie));
	return 0;
}

// ---------------------------------------------------------------------------
// North-south: tc (tcx) programs on the node's devices for traffic from
// outside the node to <this node's address>:<nodePort>, an externalIP or a
// load-balancer IP. dlb_nodeport_ingress DNATs a new flow to a backend
// (SCOPE_EXTERNAL frontends: the backends externalTrafficPolicy selects)
// and, with SVC_FLAG_SNAT (externalTrafficPolicy Cluster) and a backend
// behind another of these devices (another node), SNATs it to this node's
// address on that device, then redirects it to the backend's device.
// dlb_nat4 holds both directions of each flow; a reply from a local
// backend is turned back on its way out (dlb_nodeport_egress), a reply to
// a SNATed flow on its way in.

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>

#ifndef AF_INET
#define AF_INET 2
#endif

// dlb_nat4 value flags: which program rewrites packets of this tuple.
#define NAT_INGRESS 0x1 // client -> backend, and SNATed replies
#define NAT_EGRESS 0x2  // replies of local backends, on the way out

// SNAT source ports: above Linux's default ephemeral range (32768-60999)
// so that they do not collide with the node's own connections.
#define NAT_PORT_MIN 61000
#define NAT_PORT_SPAN 4536
#define NAT_PORT_TRIES 8

// The affinity client of a packet is its source address, with bit 63 set
// so that it never equals a netns cookie.
#define CLIENT_ADDR (1ULL << 63)

struct nat4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

// nat4_val is the tuple a packet of the key's flow is rewritten to, and
// the device it then leaves by (ingress only).
struct nat4_val {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 ifindex;
	__u8 flags;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat4_key);
	__type(value, struct nat4_val);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_nat4 SEC(".maps");

// dlb_devices: ifindex -> 1 for the devices the tc programs are attached
// to. A backend reached through one of them is on another node.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dlb_devices SEC(".maps");

struct pkt4 {
	__u32 l3;
	__u32 l4;
	__u32 csum;
	__u64 csum_flags;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u16 len;
};

// parse4 reads an Ethernet + IPv4 + TCP/UDP packet that is not a fragment.
static __always_inline int parse4(struct __sk_buff *skb, struct pkt4 *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__be16 ports[2];
	__u32 ihl;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return -1;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip) || (ip->frag_off & bpf_htons(0x3fff)))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	p->l3 = sizeof(*eth);
	p->l4 = sizeof(*eth) + ihl;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->len = bpf_ntohs(ip->tot_len);
	if (p->proto == IPPROTO_TCP) {
		p->csum = p->l4 + __builtin_offsetof(struct tcphdr, check);
		p->csum_flags = 0;
	} else {
		p->csum = p->l4 + __builtin_offsetof(struct udphdr, check);
		p->csum_flags = BPF_F_MARK_MANGLED_0;
	}
	if (bpf_skb_load_bytes(skb, p->l4, ports, sizeof(ports)) < 0)
		return -1;
	p->sport = ports[0];
	p->dport = ports[1];
	return 0;
}

static __always_inline int rewrite_addr(struct __sk_buff *skb, struct pkt4 *p, __u32 off, __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csum, from, to, p->csum_flags | BPF_F_PSEUDO_HDR | 4) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3 + __builtin_offsetof(struct iphdr, check), from, to, 4) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l3 + off, &to, 4, 0);
}

static __always_inline int rewrite_port(struct __sk_buff *skb, struct pkt4 *p, __u32 off, __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csum, from, to, p->csum_flags | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l4 + off, &to, 2, 0);
}

// rewrite4 turns p's tuple into to's, checksums included.
static __always_inline int rewrite4(struct __sk_buff *skb, struct pkt4 *p, const struct nat4_val *to)
{
	if (rewrite_addr(skb, p, __builtin_offsetof(struct iphdr, saddr), p->saddr, to->saddr) < 0 ||
	    rewrite_addr(skb, p, __builtin_offsetof(struct iphdr, daddr), p->daddr, to->daddr) < 0 ||
	    rewrite_port(skb, p, 0, p->sport, to->sport) < 0 ||
	    rewrite_port(skb, p, 2, p->dport, to->dport) < 0)
		return -1;
	return 0;
}

static __always_inline void nat_key(struct nat4_key *k, __be32 saddr, __be32 daddr, __be16 sport, __be16 dport, __u8 proto)
{
	k->saddr = saddr;
	k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
}

// external_frontend is the SCOPE_EXTERNAL master for a packet to
// daddr:dport: an externalIP or load-balancer IP, else a NodePort of this
// node's address.
static __always_inline struct svc4_val *external_frontend(struct svc4_key *key, struct pkt4 *p)
{
	struct svc4_val *master;
	__u8 *na;

	key->addr = p->daddr;
	key->port = p->dport;
	key->proto = p->proto;
	key->scope = SCOPE_EXTERNAL;
	master = bpf_map_lookup_elem(&dlb_svc4, key);
	if (master)
		return master;
	na = bpf_map_lookup_elem(&dlb_nodeaddr4, &p->daddr);
	if (!na || !(*na & NODEADDR_LOCAL))
		return NULL;
	key->addr = 0;
	key->scope = SCOPE_EXTERNAL | SCOPE_NODEPORT;
	return bpf_map_lookup_elem(&dlb_svc4, key);
}

// new_flow picks a backend for the first packet of a flow to a frontend and
// records both directions in dlb_nat4. It returns a TC verdict, or -1 with
// *out set to the forward rewrite.
static __always_inline int new_flow(struct __sk_buff *skb, struct pkt4 *p, struct nat4_val *out)
{
	struct svc4_key key = {};
	struct svc4_val *master;
	struct backend4 *be;
	struct bpf_fib_lookup fib = {};
	struct nat4_key k = {}, rk = {};
	struct nat4_val rv = {};
	__u32 backend_id = 0;
	int rc, i;

	master = external_frontend(&key, p);
	if (!master)
		return TC_ACT_OK;
	if (master->count == 0)
		// Drop (externalTrafficPolicy Local, endpoints elsewhere only);
		// otherwise the stack answers it as it answers a closed port:
		// a reset, or port unreachable.
		return master->flags & SVC_FLAG_DROP ? TC_ACT_SHOT : TC_ACT_OK;
	be = pick_backend(CLIENT_ADDR | p->saddr, &key, master, &backend_id);
	if (!be)
		return TC_ACT_SHOT;

	fib.family = AF_INET;
	fib.l4_protocol = p->proto;
	fib.tot_len = p->len;
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = be->addr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SRC);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;

	out->saddr = p->saddr;
	out->sport = p->sport;
	out->daddr = be->addr;
	out->dport = be->port;
	out->ifindex = fib.ifindex;
	out->flags = NAT_INGRESS;

	// The reply's rewrite: from the backend back to the frontend.
	rv.saddr = p->daddr;
	rv.sport = p->dport;
	rv.daddr = p->saddr;
	rv.dport = p->sport;
	rv.ifindex = skb->ingress_ifindex;

	if ((master->flags & SVC_FLAG_SNAT) && bpf_map_lookup_elem(&dlb_devices, &fib.ifindex)) {
		// A backend on another node: its reply must come back here.
		rv.flags = NAT_INGRESS;
		out->saddr = fib.ipv4_src;
		for (i = 0; i < NAT_PORT_TRIES; i++) {
			__be16 port = bpf_htons(NAT_PORT_MIN + bpf_get_prandom_u32() % NAT_PORT_SPAN);

			nat_key(&rk, be->addr, fib.ipv4_src, be->port, port, p->proto);
			if (bpf_map_update_elem(&dlb_nat4, &rk, &rv, BPF_NOEXIST) == 0) {
				out->sport = port;
				break;
			}
		}
		if (i == NAT_PORT_TRIES)
			return TC_ACT_SHOT;
	} else {
		// A local backend replies through this node to the client.
		rv.flags = NAT_EGRESS;
		nat_key(&rk, be->addr, p->saddr, be->port, p->sport, p->proto);
		if (bpf_map_update_elem(&dlb_nat4, &rk, &rv, BPF_ANY) < 0)
			return TC_ACT_SHOT;
	}
	nat_key(&k, p->saddr, p->daddr, p->sport, p->dport, p->proto);
	if (bpf_map_update_elem(&dlb_nat4, &k, out, BPF_ANY) < 0)
		return TC_ACT_SHOT;
	return -1;
}

SEC("tc")
int dlb_nodeport_ingress(struct __sk_buff *skb)
{
	struct pkt4 p = {};
	struct nat4_key k = {};
	struct nat4_val to, *nv;
	int rc;

	if (parse4(skb, &p) < 0)
		return TC_ACT_OK;
	nat_key(&k, p.saddr, p.daddr, p.sport, p.dport, p.proto);
	nv = bpf_map_lookup_elem(&dlb_nat4, &k);
	if (nv) {
		if (!(nv->flags & NAT_INGRESS))
			return TC_ACT_OK;
		to = *nv;
	} else {
		rc = new_flow(skb, &p, &to);
		if (rc >= 0)
			return rc;
	}
	if (rewrite4(skb, &p, &to) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(to.ifindex, NULL, 0, 0);
}

SEC("tc")
int dlb_nodeport_egress(struct __sk_buff *skb)
{
	struct pkt4 p = {};
	struct nat4_key k = {};
	struct nat4_val *nv;

	if (parse4(skb, &p) < 0)
		return TC_ACT_OK;
	nat_key(&k, p.saddr, p.daddr, p.sport, p.dport, p.proto);
	nv = bpf_map_lookup_elem(&dlb_nat4, &k);
	if (!nv || !(nv->flags & NAT_EGRESS))
		return TC_ACT_OK;
	if (rewrite4(skb, &p, nv) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
