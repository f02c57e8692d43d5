package main

import (
	"fmt"
	"strings"

	"relay/internal/dkimkey"
)

func cmdKeygen(e env) int {
	fs := e.flags("keygen")
	typ := fs.String("type", "ed25519", "key type: ed25519 or rsa")
	bits := fs.Int("bits", 2048, "RSA key size")
	out := fs.String("out", "", "file to write the private key to (mode 0600; never overwritten)")
	selector := fs.String("selector", "default", "DKIM selector, for the printed record name")
	domain := fs.String("domain", "", "domain, for the printed record name")
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
	if *domain != "" {
		name += "." + strings.TrimSuffix(*domain, ".") + "."
	}
	fmt.Fprintf(e.stderr, "wrote %s; publish this TXT record:\n", *out)
	fmt.Fprintf(e.stdout, "%s IN TXT %s\n", name, quoteTXT(rec))
	return 0
}

// quoteTXT splits a record into the quoted strings of at most 255 octets that a TXT
// RDATA is made of (RFC 1035 §3.3.14); RSA-2048 keys need two.
func quoteTXT(s string) string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, `"`+s[:255]+`"`)
		s = s[255:]
	}
	parts = append(parts, `"`+s+`"`)
	if len(parts) == 1 {
		return parts[0]
	}
	return "( " + strings.Join(parts, " ") + " )"
}
