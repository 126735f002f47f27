package bedimages

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// AppVersion reads the appVersion of the chart's Chart.yaml.
func AppVersion(chartFile string) (string, error) {
	data, err := os.ReadFile(chartFile)
	if err != nil {
		return "", err
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		return "", fmt.Errorf("parse %s: %w", chartFile, err)
	}
	if chart.AppVersion == "" {
		return "", fmt.Errorf("%s has no appVersion", chartFile)
	}
	return chart.AppVersion, nil
}

// ManifestPath is the e2e framework's image manifest inside the
// k8s.io/kubernetes module.
const ManifestPath = "test/utils/image/manifest.go"

// LocateManifest returns the e2e framework's image manifest of the
// k8s.io/kubernetes version that the Go module in dir pins
// (`go list -m k8s.io/kubernetes`, from the module cache).
func LocateManifest(ctx context.Context, goTool, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, goTool, "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes")
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locate k8s.io/kubernetes of %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" {
		return "", fmt.Errorf("locate k8s.io/kubernetes of %s: not in the module cache (go mod download k8s.io/kubernetes there)", dir)
	}
	return filepath.Join(mod, ManifestPath), nil
}

// E2ERefs returns the image references the e2e framework's manifest.go
// gives its image IDs (Agnhost, BusyBox, Pause, ...): each
// `configs[ID] = Config{list.Registry, "name", "version"}` with the registry
// from the `RegistryList{...}` literal of the defaults, as
// GetE2EImage formats them (KUBE_TEST_REPO_LIST is not applied).
func E2ERefs(manifestFile string) (map[string]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), manifestFile, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	registries := map[string]string{}
	type config struct{ registry, name, version string }
	configs := map[string]config{}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CompositeLit:
			if id, ok := n.Type.(*ast.Ident); !ok || id.Name != "RegistryList" {
				return true
			}
			for _, e := range n.Elts {
				kv, ok := e.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				k, ok1 := kv.Key.(*ast.Ident)
				v, ok2 := stringLit(kv.Value)
				if ok1 && ok2 {
					registries[k.Name] = v
				}
			}
		case *ast.AssignStmt:
			if len(n.Lhs) != 1 || len(n.Rhs) != 1 {
				return true
			}
			ix, ok := n.Lhs[0].(*ast.IndexExpr)
			if !ok || !isIdent(ix.X, "configs") {
				return true
			}
			id, ok := ix.Index.(*ast.Ident)
			lit, ok2 := n.Rhs[0].(*ast.CompositeLit)
			if !ok || !ok2 || !isIdent(lit.Type, "Config") || len(lit.Elts) != 3 {
				return true
			}
			sel, ok := lit.Elts[0].(*ast.SelectorExpr)
			name, ok2 := stringLit(lit.Elts[1])
			version, ok3 := stringLit(lit.Elts[2])
			if ok && ok2 && ok3 {
				configs[id.Name] = config{sel.Sel.Name, name, version}
			}
		}
		return true
	})
	refs := map[string]string{}
	var errs []error
	for id, c := range configs {
		reg, ok := registries[c.registry]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: image %s: no default for registry %s", manifestFile, id, c.registry))
			continue
		}
		refs[id] = reg + "/" + c.name + ":" + c.version
	}
	if len(refs) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: no image configs found", manifestFile))
	}
	return refs, errors.Join(errs...)
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}
