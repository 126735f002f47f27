package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs a command; tests point it into a network namespace.
type Runner func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)

// ExecRunner runs commands in the agent's own network namespace.
func ExecRunner(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// CleanupKubeProxy removes what kube-proxy leaves behind, as
// `kube-proxy --cleanup` does: the KUBE-* chains of the iptables nat,
// filter and mangle tables (IPv4 and IPv6, with the jumps to them from the
// built-in chains) and the nftables tables "kube-proxy" in the ip and ip6
// families. What is already gone, or a tool that is not installed, is fine.
func CleanupKubeProxy(ctx context.Context, run Runner) error {
	var errs []error
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"nat", "filter", "mangle"} {
			if err := cleanupIptablesTable(ctx, run, tool, table); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, family := range []string{"ip", "ip6"} {
		out, err := run(ctx, nil, "nft", "list", "tables", family)
		if err != nil {
			if isMissingTool(err) {
				break
			}
			errs = append(errs, fmt.Errorf("list nft %s tables: %w", family, err))
			continue
		}
		if !strings.Contains(string(out), "table "+family+" kube-proxy") {
			continue
		}
		if _, err := run(ctx, nil, "nft", "delete", "table", family, "kube-proxy"); err != nil {
			errs = append(errs, fmt.Errorf("delete nft table %s kube-proxy: %w", family, err))
		}
	}
	return errors.Join(errs...)
}

func isMissingTool(err error) bool {
	return errors.Is(err, exec.ErrNotFound)
}

// cleanupIptablesTable rewrites one table through iptables-restore
// --noflush: declaring each KUBE-* chain flushes it, the jumps from the
// built-in chains are deleted, then the chains themselves.
func cleanupIptablesTable(ctx context.Context, run Runner, tool, table string) error {
	out, err := run(ctx, nil, tool+"-save", "-t", table)
	if err != nil {
		if isMissingTool(err) {
			return nil
		}
		// A table the kernel does not have is nothing to clean.
		if strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "Table does not exist") {
			return nil
		}
		return fmt.Errorf("%s-save -t %s: %w", tool, table, err)
	}
	var chains, jumps []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":KUBE-"):
			chains = append(chains, strings.Fields(line[1:])[0])
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if len(f) > 1 && !strings.HasPrefix(f[1], "KUBE-") && strings.Contains(line, " -j KUBE-") {
				jumps = append(jumps, "-D"+line[2:])
			}
		}
	}
	if len(chains) == 0 && len(jumps) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, j := range jumps {
		b.WriteString(j + "\n")
	}
	for _, c := range chains {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	if _, err := run(ctx, []byte(b.String()), tool+"-restore", "--noflush"); err != nil {
		return fmt.Errorf("remove kube-proxy chains from %s table %s: %w", tool, table, err)
	}
	return nil
}
