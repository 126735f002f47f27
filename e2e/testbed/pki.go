package testbed

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// pki is where the test bed's certificates and keys live (StateDir/pki).
type pki struct{ dir string }

func (p pki) path(name string) string { return filepath.Join(p.dir, name) }

// Files of the PKI.
const (
	caCert            = "ca.crt"
	caKey             = "ca.key"
	apiserverCert     = "apiserver.crt"
	apiserverKey      = "apiserver.key"
	adminCert         = "admin.crt"
	adminKey          = "admin.key"
	saKey             = "sa.key"
	saPub             = "sa.pub"
	frontProxyCACert  = "front-proxy-ca.crt"
	frontProxyCAKey   = "front-proxy-ca.key"
	frontProxyCert    = "front-proxy-client.crt"
	frontProxyKeyFile = "front-proxy-client.key"
	// The apiserver's client certificate for the kubelets' API (logs,
	// exec, port-forward).
	kubeletClientCert = "apiserver-kubelet-client.crt"
	kubeletClientKey  = "apiserver-kubelet-client.key"
	// kube-proxy's client certificate (system:kube-proxy, which the
	// bootstrap policy binds to system:node-proxier), for the control
	// runs with kube-proxy (--kube-proxy).
	kubeProxyCert = "kube-proxy.crt"
	kubeProxyKey  = "kube-proxy.key"
)

// nodeCert and nodeKey are node's client certificate and key: identity
// system:node:<node> in group system:nodes, which the Node authorizer and
// NodeRestriction admit.
func nodeCert(node string) string { return "node-" + node + ".crt" }
func nodeKey(node string) string  { return "node-" + node + ".key" }

// nodeServingCert and nodeServingKey are the kubelet's serving certificate
// (its node address and name), which the apiserver verifies.
func nodeServingCert(node string) string { return "node-" + node + "-serving.crt" }
func nodeServingKey(node string) string  { return "node-" + node + "-serving.key" }

// keyPair is a certificate and its key, both in memory.
type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// generatePKI writes a fresh CA, the apiserver's serving certificate, the
// admin client certificate, the ServiceAccount signing key and the front
// proxy (aggregation) CA and client certificate, the apiserver's client
// certificate for the kubelets and each node's client certificate. ECDSA
// P-256 throughout: it takes microseconds, RSA takes a noticeable share of
// the bring-up.
func generatePKI(dir string, nodes []Node) error {
	p := pki{dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	ca, err := newCA("directlb-testbed-ca")
	if err != nil {
		return err
	}
	pairs, err := controlPlanePairs(ca)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		np, err := nodePairs(ca, n)
		if err != nil {
			return err
		}
		pairs = append(pairs, np...)
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: service account key: %w", err)
	}
	for _, kp := range pairs {
		if err := writePEM(p.path(kp.crt), "CERTIFICATE", kp.kp.cert.Raw); err != nil {
			return err
		}
		if err := writeKey(p.path(kp.key), kp.kp.key); err != nil {
			return err
		}
	}
	if err := writeKey(p.path(saKey), sa); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(sa.Public())
	if err != nil {
		return fmt.Errorf("pki: service account public key: %w", err)
	}
	return writePEM(p.path(saPub), "PUBLIC KEY", pub)
}

// certFiles is a key pair and the files of the PKI it is written to.
type certFiles struct {
	kp       keyPair
	crt, key string
}

// controlPlanePairs are the CA itself, the apiserver's serving certificate,
// the admin client certificate, the front proxy CA and client certificate,
// the apiserver's client certificate for the kubelets and kube-proxy's
// client certificate.
func controlPlanePairs(ca keyPair) ([]certFiles, error) {
	serving, err := ca.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), HostAddr.AsSlice(), firstServiceIP().AsSlice()},
	})
	if err != nil {
		return nil, err
	}
	admin, err := ca.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "directlb-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	fpCA, err := newCA("directlb-testbed-front-proxy-ca")
	if err != nil {
		return nil, err
	}
	fp, err := fpCA.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "front-proxy-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	kubeletClient, err := ca.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	kubeProxy, err := ca.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:kube-proxy"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	return []certFiles{
		{ca, caCert, caKey},
		{serving, apiserverCert, apiserverKey},
		{admin, adminCert, adminKey},
		{fpCA, frontProxyCACert, frontProxyCAKey},
		{fp, frontProxyCert, frontProxyKeyFile},
		{kubeletClient, kubeletClientCert, kubeletClientKey},
		{kubeProxy, kubeProxyCert, kubeProxyKey},
	}, nil
}

// nodePairs are node n's client certificate (system:node:<node>) and its
// kubelet's serving certificate.
func nodePairs(ca keyPair, n Node) ([]certFiles, error) {
	client, err := ca.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:node:" + n.Name, Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	serving, err := ca.issue(x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:node:" + n.Name, Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{n.Name},
		IPAddresses: []net.IP{n.ENIs[0].Addr.Addr().AsSlice()},
	})
	if err != nil {
		return nil, err
	}
	return []certFiles{{client, nodeCert(n.Name), nodeKey(n.Name)}, {serving, nodeServingCert(n.Name), nodeServingKey(n.Name)}}, nil
}

func newCA(cn string) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("pki: key for %s: %w", cn, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return keyPair{}, fmt.Errorf("pki: self-sign %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return keyPair{}, fmt.Errorf("pki: parse %s: %w", cn, err)
	}
	return keyPair{cert: cert, key: key}, nil
}

// issue signs a leaf certificate from tmpl with a fresh key.
func (ca keyPair) issue(tmpl x509.Certificate) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("pki: key for %s: %w", tmpl.Subject.CommonName, err)
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return keyPair{}, fmt.Errorf("pki: sign %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return keyPair{}, fmt.Errorf("pki: parse %s: %w", tmpl.Subject.CommonName, err)
	}
	return keyPair{cert: cert, key: key}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return n
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

func writeKey(path string, key crypto.Signer) error {
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return fmt.Errorf("pki: %s: not an ECDSA key", path)
	}
	der, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		return fmt.Errorf("pki: encode %s: %w", path, err)
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

// firstServiceIP is the ClusterIP of the "kubernetes" Service.
func firstServiceIP() netip.Addr {
	return ServiceCIDR.Masked().Addr().Next()
}

// writeKubeconfig writes an admin kubeconfig for server with the PKI's
// certificates embedded.
func writeKubeconfig(path, server string, p pki) error {
	return writeClientKubeconfig(path, server, p, adminCert, adminKey, "directlb-admin")
}

// writeClientKubeconfig writes a kubeconfig for server whose user is the
// client certificate crtFile/keyFile of the PKI.
func writeClientKubeconfig(path, server string, p pki, crtFile, keyFile, user string) error {
	ca, err := os.ReadFile(p.path(caCert))
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	crt, err := os.ReadFile(p.path(crtFile))
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	key, err := os.ReadFile(p.path(keyFile))
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["directlb"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts["directlb"] = &clientcmdapi.Context{Cluster: "directlb", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "directlb"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
