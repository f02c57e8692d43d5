package httpd_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dnstest"
	"relay/internal/doctor"
	"relay/internal/httpd"
	"relay/internal/relaytest"
	"relay/internal/server"
	"relay/internal/smtptest"
)

// env is a relay started in this process with its HTTP side on loopback.
type env struct {
	t     *testing.T
	sink  *smtptest.Sink
	dns   *dnstest.Server
	srv   *server.Server
	cfg   *config.Config
	path  string // the configuration file
	spool string // the spool directory
	base  string // http://127.0.0.1:PORT
}

// setup is what a test changes: the configuration text, the HTTP options, the mode
// ("spool", "direct" or "dry-run"; default "spool").
type setup struct {
	mode string
	edit func(string) string
	http httpd.Options
}

// start writes relaytest.BaseConfig with [http] listen on 127.0.0.1:0 and starts the relay.
func start(t *testing.T, s setup) *env {
	t.Helper()
	e := &env{t: t, sink: smtptest.Start(t), dns: dnstest.New(t, relaytest.Zone(t))}
	dir := t.TempDir()
	e.spool = filepath.Join(dir, "spool")
	mode := s.mode
	if mode == "" {
		mode = "spool"
	}
	qmode := mode
	if mode == "dry-run" {
		qmode = "direct"
	}
	text := relaytest.Config(e.sink.Addr, e.dns.Addr, qmode, e.spool) + "[http]\nlisten = \"127.0.0.1:0\"\n"
	if s.edit != nil {
		text = s.edit(text)
	}
	e.path = filepath.Join(dir, "relay.toml")
	require.NoError(t, os.WriteFile(e.path, []byte(text), 0o600))
	cfg, err := config.Load(e.path)
	require.NoError(t, err)
	e.cfg = cfg
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	e.srv, err = server.New(cfg, server.Options{DryRun: mode == "dry-run", Log: log, HTTP: s.http})
	require.NoError(t, err)
	t.Cleanup(func() { e.srv.Shutdown(5 * time.Second) })
	require.NotEmpty(t, e.srv.HTTPAddr())
	e.base = "http://" + e.srv.HTTPAddr()
	return e
}

// doctorJSON is the DNS doctor as cmd/relay wires it.
func doctorJSON(ctx context.Context, cfg *config.Config, domain, unit string, w io.Writer) error {
	d, err := doctor.New(cfg)
	if err != nil {
		return err
	}
	return doctor.WriteJSON(w, d.Run(ctx, []doctor.Target{{Domain: domain, Unit: unit}}))
}

// get fetches path and returns the response and its body.
func (e *env) get(path string) (*http.Response, string) {
	e.t.Helper()
	return e.do(http.MethodGet, path, nil)
}

func (e *env) do(method, path string, prep func(*http.Request)) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, nil)
	require.NoError(e.t, err)
	if prep != nil {
		prep(req)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return resp, string(b)
}

// replace returns an edit that replaces old with new in the configuration, once.
func replace(old, new string) func(string) string {
	return func(s string) string {
		if !strings.Contains(s, old) {
			panic("config has no " + old)
		}
		return strings.Replace(s, old, new, 1)
	}
}
