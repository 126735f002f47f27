package testbed

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// controlPlane returns the control-plane daemons: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler, in that order, all on the host.
func controlPlane(cfg Config, t *Topology) []daemon {
	p := pki{dir: filepath.Join(t.StateDir, "pki")}
	v := "--v=" + strconv.Itoa(cfg.Verbosity)
	return []daemon{
		etcdDaemon(cfg, t),
		apiServerDaemon(cfg, t, p, v),
		controllerManagerDaemon(cfg, t, p, v),
		schedulerDaemon(cfg, t, v),
	}
}

// etcdDaemon is the one etcd member, on a tmpfs under the state directory.
func etcdDaemon(cfg Config, t *Topology) daemon {
	return daemon{
		Name: "etcd", Path: cfg.EtcdBinary, Cgroup: t.ControlPlaneCgroup,
		Args: []string{
			"--name=directlb",
			"--data-dir=" + filepath.Join(t.StateDir, "etcd", "data"),
			"--listen-client-urls=" + etcdClientURL,
			"--advertise-client-urls=" + etcdClientURL,
			"--listen-peer-urls=" + etcdPeerURL,
			"--initial-advertise-peer-urls=" + etcdPeerURL,
			"--initial-cluster=directlb=" + etcdPeerURL,
			// One member on a tmpfs: elect at once, no disk to wait for.
			"--heartbeat-interval=50",
			"--election-timeout=250",
			"--logger=zap",
			"--log-outputs=stderr",
		},
	}
}

// apiServerDaemon is kube-apiserver, serving on the host's address with the
// PKI's certificates.
func apiServerDaemon(cfg Config, t *Topology, p pki, v string) daemon {
	return daemon{
		Name: "kube-apiserver", Path: filepath.Join(cfg.BinDir, "kube-apiserver"), Cgroup: t.ControlPlaneCgroup,
		Args: append([]string{
			"--etcd-servers=" + etcdClientURL,
			"--bind-address=0.0.0.0",
			"--secure-port=" + strconv.Itoa(apiServerPort),
			"--advertise-address=" + t.HostAddr.String(),
			"--tls-cert-file=" + p.path(apiserverCert),
			"--tls-private-key-file=" + p.path(apiserverKey),
			"--client-ca-file=" + p.path(caCert),
			// Kubelets are nodes: system:node:<name> in system:nodes,
			// limited to their own Node and pods.
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-client-certificate=" + p.path(kubeletClientCert),
			"--kubelet-client-key=" + p.path(kubeletClientKey),
			"--kubelet-certificate-authority=" + p.path(caCert),
			// The node names do not resolve: reach kubelets by address.
			"--kubelet-preferred-address-types=InternalIP,Hostname",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p.path(saPub),
			"--service-account-signing-key-file=" + p.path(saKey),
			"--service-cluster-ip-range=" + t.ServiceCIDR.String(),
			// Webhooks and aggregated APIs are reached at their
			// endpoints' (pod) addresses, not through a ClusterIP.
			"--enable-aggregator-routing=true",
			"--requestheader-client-ca-file=" + p.path(frontProxyCACert),
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file=" + p.path(frontProxyCert),
			"--proxy-client-key-file=" + p.path(frontProxyKeyFile),
			"--allow-privileged=true",
			"--profiling=false",
			v,
		}, cfg.APIServerArgs...),
	}
}

// controllerManagerDaemon is kube-controller-manager, signing with the PKI's CA.
func controllerManagerDaemon(cfg Config, t *Topology, p pki, v string) daemon {
	kc := t.Kubeconfig
	return daemon{
		Name: "kube-controller-manager", Path: filepath.Join(cfg.BinDir, "kube-controller-manager"), Cgroup: t.ControlPlaneCgroup,
		Args: append([]string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			"--controllers=*",
			"--service-account-private-key-file=" + p.path(saKey),
			"--root-ca-file=" + p.path(caCert),
			"--use-service-account-credentials=true",
			"--cluster-signing-cert-file=" + p.path(caCert),
			"--cluster-signing-key-file=" + p.path(caKey),
			"--service-cluster-ip-range=" + t.ServiceCIDR.String(),
			"--leader-elect=false",
			// Quick reactions: this is a test bed, not a fleet.
			"--node-monitor-period=2s",
			"--concurrent-deployment-syncs=10",
			"--concurrent-replicaset-syncs=10",
			"--concurrent-service-endpoint-syncs=10",
			"--concurrent-gc-syncs=30",
			"--profiling=false",
			v,
		}, cfg.ControllerManagerArgs...),
	}
}

// schedulerDaemon is kube-scheduler.
func schedulerDaemon(cfg Config, t *Topology, v string) daemon {
	kc := t.Kubeconfig
	return daemon{
		Name: "kube-scheduler", Path: filepath.Join(cfg.BinDir, "kube-scheduler"), Cgroup: t.ControlPlaneCgroup,
		Args: []string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--profiling=false",
			v,
		},
	}
}

// localcloud returns the localcloud daemon: inside the cloud namespace, in
// the cloud cgroup.
func localcloud(cfg Config, t *Topology) daemon {
	return daemon{
		Name:   "localcloud",
		Path:   filepath.Join(cfg.BinDir, "localcloud"),
		Cgroup: t.CloudCgroup,
		NetNS:  t.CloudNetNS,
		Args: []string{
			"--listen=" + strings.TrimPrefix(t.LocalcloudURL, "http://"),
			"--admin-listen=" + strings.TrimPrefix(t.LocalcloudAdminURL, "http://"),
			"--state-dir=" + filepath.Join(t.StateDir, "localcloud"),
			"--lb-cidr=" + t.LoadBalancerCIDR.String(),
			// The nodes' ENIs, for the EC2 API (writeCloudENIs).
			"--network-interfaces-file=" + filepath.Join(t.StateDir, LocalcloudENIsFile),
		},
	}
}

// anyExited returns the first error of a daemon that has exited.
func anyExited(ds []*running) error {
	for _, d := range ds {
		if err := d.check(); err != nil {
			return err
		}
	}
	return nil
}

// ctxErr wraps the context's error with what was being waited for.
func ctxErr(ctx context.Context, what string) error {
	return fmt.Errorf("wait for %s: %w", what, context.Cause(ctx))
}
