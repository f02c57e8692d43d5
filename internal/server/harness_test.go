package server

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dnstest"
	"relay/internal/relaytest"
	"relay/internal/smtptest"
)

type relayEnv struct {
	t    *testing.T
	sink *smtptest.Sink
	dns  *dnstest.Server
	srv  *Server
	cfg  *config.Config
	addr string
	path string
}

// startRelay writes a configuration (relaytest.BaseConfig, through edit when not nil),
// starts the relay in this process with mode "spool", "direct" or "dry-run", and returns
// its address.
func startRelay(t *testing.T, mode string, edit func(string) string) *relayEnv {
	t.Helper()
	e := &relayEnv{t: t, sink: smtptest.Start(t), dns: dnstest.New(t, relaytest.Zone(t))}
	dir := t.TempDir()
	qmode := mode
	if mode == "dry-run" {
		qmode = "direct"
	}
	text := relaytest.Config(e.sink.Addr, e.dns.Addr, qmode, filepath.Join(dir, "spool"))
	if edit != nil {
		text = edit(text)
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
	e.srv, err = New(cfg, Options{DryRun: mode == "dry-run", Log: log})
	require.NoError(t, err)
	e.addr = e.srv.Addrs()[0]
	t.Cleanup(func() { e.srv.Shutdown(5 * time.Second) })
	return e
}

// send submits one message over a fresh SMTP session and returns the DATA reply (or the
// first error reply).
func (e *relayEnv) send(from string, to []string, msg string) (*smtp.SMTPError, error) {
	return smtptest.Send(e.addr, from, to, msg)
}

func asSMTP(err error) (*smtp.SMTPError, error) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, nil
	}
	return nil, err
}

// verifyDKIM checks every signature of msg against the test DNS and returns the d= of
// each valid one; any invalid signature fails the test.
func (e *relayEnv) verifyDKIM(msg []byte) []string {
	e.t.Helper()
	return relaytest.VerifyDKIM(e.t, e.dns.Addr, msg)
}
