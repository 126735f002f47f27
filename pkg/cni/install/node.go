package install

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// APIServer reads one Node with the pod's ServiceAccount token: a plain
// GET, so the plugin binary carries no Kubernetes client.
type APIServer struct {
	// Host and Port reach the apiserver; empty and 0:
	// $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT. With
	// node-agent replacing kube-proxy, the kubernetes Service's ClusterIP
	// does not work before node-agent runs, so the chart passes the
	// apiserver's own address (k8sServiceHost), as it does to node-agent.
	Host string
	Port int
	// TokenFile and CAFile are the ServiceAccount's.
	TokenFile string
	CAFile    string
}

// DefaultAPIServer is the in-cluster configuration.
func DefaultAPIServer() APIServer {
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
	return APIServer{TokenFile: sa + "token", CAFile: sa + "ca.crt"}
}

// BindFlags binds --k8s-service-host and --k8s-service-port, named as
// node-agent's.
func (a *APIServer) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&a.Host, "k8s-service-host", a.Host, "with --node-name: apiserver host to use instead of $KUBERNETES_SERVICE_HOST")
	fs.IntVar(&a.Port, "k8s-service-port", a.Port, "apiserver port with --k8s-service-host (default 443)")
}

// Validate checks the flags.
func (a *APIServer) Validate() error {
	if a.Port != 0 && a.Host == "" {
		return errors.New("--k8s-service-port: needs --k8s-service-host")
	}
	if a.Port < 0 || a.Port > 65535 {
		return fmt.Errorf("--k8s-service-port %d: must be a port", a.Port)
	}
	return nil
}

// Node is what install reads of a Node.
type Node struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		ProviderID string `json:"providerID"`
	} `json:"spec"`
}

func (a APIServer) address() (string, error) {
	host, port := a.Host, strconv.Itoa(a.Port)
	if host == "" {
		host, port = os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" {
			return "", errors.New("no apiserver: set --k8s-service-host, or run in a pod ($KUBERNETES_SERVICE_HOST)")
		}
	}
	if port == "" || port == "0" {
		port = "443"
	}
	return net.JoinHostPort(host, port), nil
}

// Node GETs /api/v1/nodes/<name>.
func (a APIServer) Node(ctx context.Context, name string) (*Node, error) {
	addr, err := a.address()
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("ServiceAccount token: %w", err)
	}
	ca, err := os.ReadFile(a.CAFile)
	if err != nil {
		return nil, fmt.Errorf("ServiceAccount CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("ServiceAccount CA %s: no certificate", a.CAFile)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	u := "https://" + addr + "/api/v1/nodes/" + url.PathEscape(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read Node %s: %w", name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("read Node %s: %w", name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read Node %s: %s: %.200s", name, resp.Status, body)
	}
	var n Node
	if err := json.Unmarshal(body, &n); err != nil {
		return nil, fmt.Errorf("decode Node %s: %w", name, err)
	}
	return &n, nil
}
