package main

import (
	"crypto"
	"fmt"
	"io"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/doctor"

	"relay/internal/server"
)

func cmdCheck(e env) int {
	fs := e.flags("check")
	cfgPath := configFlag(fs)
	if code, ok := e.parse(fs); !ok {
		return code
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	if _, err := server.NewState(cfg); err != nil {
		fmt.Fprintf(e.stderr, "relay: %s: %v\n", *cfgPath, err)
		return 1
	}
	fmt.Fprintf(e.stdout, "%s: configuration is valid\n\n", *cfgPath)
	cfg.Summary(e.stdout)
	if err := printKeyRecords(e.stdout, cfg); err != nil {
		fmt.Fprintf(e.stderr, "relay: %s: %v\n", *cfgPath, err)
		return 1
	}
	return 0
}

// printKeyRecords prints the TXT record each configured DKIM key needs, as a zone-file
// line (`relay dns` says whether it is published).
func printKeyRecords(w io.Writer, cfg *config.Config) error {
	type key struct {
		domain, selector string
		pub              crypto.PublicKey
	}
	var keys []key
	if cfg.DKIM.Signer != nil {
		keys = append(keys, key{cfg.DKIM.Domain, cfg.DKIM.Selector, cfg.DKIM.Signer.Public()})
	}
	for _, k := range cfg.DKIM.Keys {
		keys = append(keys, key{k.Domain, k.Selector, k.Signer.Public()})
	}
	if len(keys) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nDNS records the DKIM keys need (`relay dns` checks them):")
	for _, k := range keys {
		rec, err := dkimkey.Record(k.pub)
		if err != nil {
			return fmt.Errorf("dkim key %s._domainkey.%s: %w", k.selector, k.domain, err)
		}
		name := k.selector + "._domainkey"
		if k.domain != "" {
			name += "." + k.domain
		}
		fmt.Fprintln(w, "  "+doctor.TXT("dkim", "", name, rec).Zone)
	}
	return nil
}
