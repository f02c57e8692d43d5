package main

import (
	"fmt"
	"io"
	"log/slog"

	"relay/internal/config"
	"relay/internal/dnsx"
	"relay/internal/pipeline"
	"relay/internal/signer"
)

// load reads the configuration, printing every problem to w on failure.
func load(path string, w io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(w, "relay: %s: configuration is invalid:\n%v\n", path, err)
		return nil, false
	}
	return cfg, true
}

// newState loads the keys and builds the live-check authorizer for cfg.
func newState(cfg *config.Config) (*pipeline.State, error) {
	sg, err := signer.New(cfg.DKIM)
	if err != nil {
		return nil, err
	}
	return withAuth(cfg, sg, nil)
}

// withAuth completes a State with the authorizer of SPF and delegation checks. prev, when
// not nil, is the running state: its authorizer, and so its DNS cache, is kept unless the
// settings it depends on changed.
func withAuth(cfg *config.Config, sg *signer.Signer, prev *pipeline.State) (*pipeline.State, error) {
	st := &pipeline.State{Config: cfg, Signer: sg}
	if !cfg.SPF.Enabled && !cfg.DKIM.DelegationCheck {
		return st, nil
	}
	if prev != nil {
		if a, ok := prev.Auth.(*dnsx.Authorizer); ok && a != nil {
			if err := a.Reload(cfg, sg.DefaultPublicKey()); err != nil {
				return nil, fmt.Errorf("dns resolver: %w", err)
			}
			st.Auth = a
			return st, nil
		}
	}
	r, err := dnsx.NewResolver(cfg.DNS.Servers, cfg.DNS.Timeout.Duration)
	if err != nil {
		return nil, fmt.Errorf("dns resolver: %w", err)
	}
	st.Auth = dnsx.NewAuthorizer(cfg, r, sg.DefaultPublicKey())
	return st, nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	switch cfg.Log.Level {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
