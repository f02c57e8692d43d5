package main

import (
	"context"
	"fmt"
	"io"

	"relay/internal/config"
	"relay/internal/doctor"
	"relay/internal/names"
	"relay/internal/policy"
)

// cmdDNS is the DNS doctor (SPEC §9): exit 0 when every domain is ready, 1 when one is
// not, 2 when the DNS could not be asked (or on bad usage).
func cmdDNS(e env) int {
	fs := e.flags("dns")
	cfgPath := configFlag(fs)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	unit := fs.String("unit", "", "business unit the named domains send under (default: none)")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	if *unit != "" && policy.FindUnit(cfg, *unit) == nil {
		fmt.Fprintf(e.stderr, "relay dns: unknown business unit %q\n", *unit)
		return 2
	}
	var targets []doctor.Target
	for _, a := range fs.Args() {
		d, err := names.Hostname(a)
		if err != nil {
			fmt.Fprintf(e.stderr, "relay dns: %v\n", err)
			return 2
		}
		targets = append(targets, doctor.Target{Domain: d, Unit: *unit})
	}
	if len(targets) == 0 {
		targets = doctor.Targets(cfg)
		if len(targets) == 0 {
			fmt.Fprintln(e.stderr, "relay dns: the configuration names no domain: give one")
			return 2
		}
	}
	d, err := doctor.New(cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "relay dns: %v\n", err)
		return 1
	}
	res := d.Run(context.Background(), targets)
	if *asJSON {
		err = doctor.WriteJSON(e.stdout, res)
	} else {
		err = doctor.WriteText(e.stdout, res)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "relay dns: %v\n", err)
		return 1
	}
	if res.ExitCode == 2 {
		fmt.Fprintln(e.stderr, "relay dns: the DNS could not be asked:")
		for _, de := range res.DNSErrors {
			fmt.Fprintf(e.stderr, "  %s %s at %s: %s\n", de.Name, de.Type, de.Server, de.Error)
		}
		for _, r := range res.Domains {
			for _, de := range r.DNSErrors {
				fmt.Fprintf(e.stderr, "  %s: %s %s at %s: %s\n", r.Domain, de.Name, de.Type, de.Server, de.Error)
			}
		}
	}
	return res.ExitCode
}

// dnsJSON is the doctor for the HTTP side (/api/dns and the admin page): one domain, as
// `relay dns -json DOMAIN` prints it. The server cannot call the doctor itself, which
// builds on it.
func dnsJSON(ctx context.Context, cfg *config.Config, domain, unit string, w io.Writer) error {
	d, err := doctor.New(cfg)
	if err != nil {
		return err
	}
	return doctor.WriteJSON(w, d.Run(ctx, []doctor.Target{{Domain: domain, Unit: unit}}))
}
