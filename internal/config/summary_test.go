package config_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden and testdata/bad/*.err from the current output")

func TestSummary(t *testing.T) {
	t.Setenv("RELAY_TEST_UPSTREAM_PASSWORD", "upstream-secret-3")
	c, err := config.Load("testdata/summary.toml")
	require.NoError(t, err)
	require.Equal(t, "upstream-secret-3", c.Upstream.Password)

	var b strings.Builder
	c.Summary(&b)
	out := b.String()

	// No secret, in any form.
	for _, secret := range []string{"upstream-secret-3", "crm-secret", "ops-secret", "$2a$", c.Users[0].PasswordHash, "PRIVATE KEY"} {
		require.NotContains(t, out, secret)
	}

	// Paths are absolute in the summary; the golden file must not depend on the checkout.
	out = strings.ReplaceAll(out, c.Dir, "$TESTDATA")
	out = strings.ReplaceAll(out, root, "$ROOT")
	golden := filepath.Join("testdata", "summary.golden")
	if *update {
		require.NoError(t, os.WriteFile(golden, []byte(out), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), out, "run go test -run Summary -update and review the diff")
}
