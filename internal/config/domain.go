package config

import (
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// Registration validation, no mapping: a domain must already be in its proper U-label (or
// A-label) form. With UTS 46 mapping, "ｅｘａｍｐｌｅ.com" (full-width) would compare equal to
// example.com and be kept as written, but receivers compare the From domain with the DKIM
// d= without mapping: the message would fail DMARC alignment. Unmapped, it matches nothing
// and is rewritten.
var idnaProfile = idna.New(idna.ValidateForRegistration(), idna.StrictDomainName(false))

// NormalizeDomain lower-cases d and converts it to its A-label (punycode) form, dropping a
// final dot, so domains from the file and from messages compare alike (SPEC §4).
// policy.NormalizeDomain is this function.
func NormalizeDomain(d string) (string, error) {
	d = strings.TrimSuffix(strings.TrimSpace(d), ".")
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(d), nil
	}
	a, err := idnaProfile.ToASCII(strings.ToLower(d))
	if err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	return strings.ToLower(a), nil
}
