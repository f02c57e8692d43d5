package main

import (
	"fmt"
	"strings"

	"relay/internal/dkimkey"
	"relay/internal/doctor"
)

// cmdKeygen writes a new DKIM key and prints what to publish: the TXT record (split into
// 255-octet strings) on stdout, and, for a relay key at -domain, the CNAME customers
// publish to delegate signing to it.
func cmdKeygen(e env) int {
	fs := e.flags("keygen")
	typ := fs.String("type", "rsa", "key type: rsa (what every receiver verifies) or ed25519 (RFC 8463; sign with an RSA key too)")
	bits := fs.Int("bits", 2048, "RSA key size (RFC 8301: at least 1024; 2048 is what receivers expect)")
	out := fs.String("out", "", "file to write the private key to (mode 0600; never overwritten)")
	selector := fs.String("selector", "default", "DKIM selector, for the printed record name")
	domain := fs.String("domain", "", "domain the key is published at, for the printed record names")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	if *out == "" {
		fmt.Fprintln(e.stderr, "relay keygen: -out FILE is required")
		fs.Usage()
		return 2
	}
	key, err := dkimkey.Generate(strings.ToLower(*typ), *bits)
	if err != nil {
		fmt.Fprintf(e.stderr, "relay keygen: %v\n", err)
		return 1
	}
	if err := dkimkey.Write(*out, key); err != nil {
		fmt.Fprintf(e.stderr, "relay keygen: %v\n", err)
		return 1
	}
	rec, err := dkimkey.Record(key.Public())
	if err != nil {
		fmt.Fprintf(e.stderr, "relay keygen: %v\n", err)
		return 1
	}
	name := *selector + "._domainkey"
	d := strings.TrimSuffix(*domain, ".")
	if d != "" {
		name += "." + d
	}
	txt := doctor.TXT("dkim", "", name, rec)
	if d == "" {
		// No domain: the name is relative to whichever zone it goes into.
		txt.Zone = strings.Replace(txt.Zone, name+". IN", name+" IN", 1)
	}
	fmt.Fprintf(e.stderr, "wrote %s; publish this TXT record:\n", *out)
	fmt.Fprintln(e.stdout, txt.Zone)
	if d != "" {
		fmt.Fprintf(e.stderr, "\nwith [dkim] domain = %q, selector = %q and this key as private_key, a customer domain\n"+
			"delegates signing to the relay with one CNAME (here for customer.example):\n", d, *selector)
		fmt.Fprintln(e.stdout, doctor.CNAME("dkim", "", *selector+"._domainkey.customer.example", name).Zone)
	}
	return 0
}
