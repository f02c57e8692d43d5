package main

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/httpd"
	"relay/internal/server"
)

// GET /api/preview answers byte for byte what `relay send -dry-run -json` prints, for the
// same configuration (config.example.toml, on ports the kernel picks).
func TestPreviewMatchesSend(t *testing.T) {
	dir := t.TempDir()
	text, err := os.ReadFile(example)
	require.NoError(t, err)
	keys, _ := filepath.Abs("../../testdata/keys")
	s := strings.ReplaceAll(string(text), `"testdata/keys/`, `"`+keys+`/`)
	s = strings.Replace(s, `listen = "127.0.0.1:2525"`, `listen = "127.0.0.1:0"`, 1)
	s = strings.Replace(s, `listen = "127.0.0.1:8025"`, `listen = "127.0.0.1:0"`, 1)
	path := filepath.Join(dir, "relay.toml")
	require.NoError(t, os.WriteFile(path, []byte(s), 0o600))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	srv, err := server.New(cfg, server.Options{HTTP: httpd.Options{DNS: dnsJSON}})
	require.NoError(t, err)
	t.Cleanup(func() { srv.Shutdown(5 * time.Second) })

	for _, tc := range []struct{ from, unit string }{
		{"alice@gmail.com", ""},
		{"alice@gmail.com", "sales"},
		{"alice@example.com", ""},
		{"bob@mail.example.com", "sales"},
	} {
		args := []string{"send", "-config", path, "-dry-run", "-json", "-from", tc.from}
		q := url.Values{"from": {tc.from}}
		if tc.unit != "" {
			args = append(args, "-unit", tc.unit)
			q.Set("unit", tc.unit)
		}
		code, want, errs := runCLI(t, "", args...)
		require.Equal(t, 0, code, errs)
		resp, err := http.Get("http://" + srv.HTTPAddr() + "/api/preview?" + q.Encode())
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(got))
		require.Equal(t, want, string(got), "%s %s", tc.from, tc.unit)
	}
}
