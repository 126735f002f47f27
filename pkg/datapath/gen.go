package datapath

// The BPF objects and their Go bindings are committed, so a build needs no
// clang. Regenerate with `go generate ./pkg/datapath/...` (or `make generate`).
//go:generate go tool bpf2go -tags linux -target bpfel -type svc4_key -type svc4_val -type backend4 -type revnat4_key -type revnat4_val -type affinity4_key -type affinity4_val -type affmatch_key -type nat4_key -type nat4_val -type sticky4_key -type sticky4_val -type sockdestroy4_key sockLB bpf/sock_lb.c -- -O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu
