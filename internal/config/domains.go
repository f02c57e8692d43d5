package config

import (
	"strings"

	"relay/internal/names"
)

// NamedDomain is a domain the configuration names, with the business unit whose mail uses
// it ("" for none).
type NamedDomain struct {
	Domain string
	Unit   string
}

// NamedDomains are the domains c names, each once, in the order of the file: [sender]
// allowed_domains, each unit's allowed_domains, [[dkim.keys]] domains, the global
// fallback's domain, then each unit's fallback domain. "*." patterns name no one domain
// and are left out. `relay dns` without arguments and the admin page check these.
func (c *Config) NamedDomains() []NamedDomain {
	var out []NamedDomain
	seen := map[string]bool{}
	add := func(d, unit string) {
		if d == "" || strings.HasPrefix(d, "*.") || seen[d] {
			return
		}
		seen[d] = true
		out = append(out, NamedDomain{Domain: d, Unit: unit})
	}
	for _, d := range c.Sender.Domains {
		add(d, "")
	}
	for _, u := range c.Units {
		for _, d := range u.Domains {
			add(d, u.Name)
		}
	}
	for _, k := range c.DKIM.Keys {
		add(k.Domain, "")
	}
	add(names.AddressDomain(c.Sender.Fallback), "")
	for _, u := range c.Units {
		add(names.AddressDomain(u.Fallback), u.Name)
	}
	return out
}
