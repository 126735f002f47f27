// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// directlb socket-level load balancer for ClusterIP Services.
//
// The programs run on cgroup v2 sock_addr hooks. connect4 and sendmsg4
// translate a ClusterIP frontend to one of its backends once, when the
// application connects (TCP, connected UDP) or sends (unconnected UDP).
// recvmsg4 and getpeername4 translate the backend back to the frontend so the
// application only ever sees the ClusterIP as its peer.
//
// Map layout (kept in step with pkg/datapath/types.go):
//   dlb_svc4        (frontend, slot) -> service value. Slot 0 is the master:
//                   backend count, service ID, affinity timeout. Slots 1..N
//                   hold backend IDs. Writers fill backends and slots first
//                   and the master last, so a reader never sees a master
//                   whose slots are missing.
//   dlb_backends4   backend ID -> address, port, protocol.
//   dlb_revnat4     (socket cookie, backend address, port) -> frontend; LRU.
//   dlb_affinity4   (client netns cookie, service ID) -> backend ID, last use; LRU.
//   dlb_affmatch4   (backend ID, service ID) -> 1 while that backend serves
//                   the service; an affinity entry is only honoured if its
//                   backend still matches.
//
// IPv6 uses the same layout with 16-byte addresses; its maps and programs are
// not written yet (connect6 etc.).

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define SVC_FLAG_AFFINITY 0x1

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
	__u16 pad;
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

static __always_inline struct svc4_val *lookup_master(__be32 addr, __be16 port, __u8 proto)
{
	struct svc4_key key = {
		.addr = addr,
		.port = port,
		.proto = proto,
	};
	return bpf_map_lookup_elem(&dlb_svc4, &key);
}

static __always_inline struct backend4 *pick_backend(struct bpf_sock_addr *ctx,
						     struct svc4_key *key,
						     const struct svc4_val *master,
						     __u32 *backend_id)
{
	struct affinity4_key akey = {};
	struct backend4 *be;
	struct svc4_val *slot;
	__u64 now = 0;
	__u32 id;

	if (master->flags & SVC_FLAG_AFFINITY) {
		struct affinity4_val *aval;

		akey.client = bpf_get_netns_cookie(ctx);
		akey.svc_id = master->svc_id;
		now = bpf_ktime_get_ns();
		aval = bpf_map_lookup_elem(&dlb_affinity4, &akey);
		if (aval && now - aval->last_used_ns <=
				    (__u64)master->affinity_timeout * 1000000000ULL) {
			struct affmatch_key mkey = {
				.backend_id = aval->backend_id,
				.svc_id = master->svc_id,
			};
			if (bpf_map_lookup_elem(&dlb_affmatch4, &mkey)) {
				id = aval->backend_id;
				be = bpf_map_lookup_elem(&dlb_backends4, &id);
				if (be) {
					aval->last_used_ns = now;
					*backend_id = id;
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
		struct affinity4_val aval = {
			.last_used_ns = now,
			.backend_id = id,
		};
		bpf_map_update_elem(&dlb_affinity4, &akey, &aval, BPF_ANY);
	}
	*backend_id = id;
	return be;
}

// translate rewrites a ClusterIP destination to a backend. It returns 1 to
// let the call go on (translated or not a Service) and 0 to refuse it.
static __always_inline int translate(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct svc4_key key = {
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.proto = proto,
	};
	struct revnat4_key rkey = {};
	struct revnat4_val rval = {};
	struct svc4_val *master;
	struct backend4 *be;
	__u32 backend_id = 0;

	master = bpf_map_lookup_elem(&dlb_svc4, &key);
	if (!master)
		return 1;
	if (master->count == 0) {
		// A Service without endpoints: refuse at once, as kube-proxy's
		// REJECT rule does, instead of letting the caller time out.
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	be = pick_backend(ctx, &key, master, &backend_id);
	if (!be) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = be->addr;
	rkey.port = be->port;
	rval.addr = ctx->user_ip4;
	rval.port = (__be16)ctx->user_port;
	rval.svc_id = master->svc_id;
	bpf_map_update_elem(&dlb_revnat4, &rkey, &rval, BPF_ANY);

	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	return 1;
}

static __always_inline void reverse(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct revnat4_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct revnat4_val *rval;
	struct svc4_val *master;

	rval = bpf_map_lookup_elem(&dlb_revnat4, &rkey);
	if (!rval)
		return;
	// Only while the Service still exists with the same ID.
	master = lookup_master(rval->addr, rval->port, proto);
	if (!master || master->svc_id != rval->svc_id) {
		bpf_map_delete_elem(&dlb_revnat4, &rkey);
		return;
	}
	ctx->user_ip4 = rval->addr;
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

	if (!proto)
		return 1;
	return translate(ctx, proto);
}

SEC("cgroup/sendmsg4")
int dlb_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	return translate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int dlb_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol == IPPROTO_UDP)
		reverse(ctx, IPPROTO_UDP);
	return 1;
}

SEC("cgroup/getpeername4")
int dlb_getpeername4(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);

	if (proto)
		reverse(ctx, proto);
	return 1;
}
