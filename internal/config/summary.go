package config

import (
	"crypto"
	"crypto/rsa"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"relay/internal/dkimkey"
)

// Summary writes what `relay check` prints for a valid file: what the relay will listen
// on, who may send, how senders are decided, which DKIM records to publish, and where mail
// goes. It never writes a secret: no password, no password hash, no private key.
func (c *Config) Summary(w io.Writer) {
	s := &summary{w: w}
	fmt.Fprintf(w, "Config\n")
	s.line("file", c.Path)
	s.line("hostname", c.Hostname)

	s.section("SMTP")
	listen := orOff(c.SMTP.Listen)
	if c.SMTP.Listen != "" {
		if c.SMTP.Certificate != nil {
			listen += " (STARTTLS)"
		} else {
			listen += " (no certificate: no STARTTLS)"
		}
	}
	s.line("listen", listen)
	s.line("implicit TLS", orOff(c.SMTP.ImplicitTLSListen))
	if c.SMTP.Certificate != nil {
		s.line("certificate", c.SMTP.TLSCert+" "+certNames(c))
	}
	if len(c.SMTP.Networks) == 0 {
		s.line("allow networks", "none: every client must AUTH")
	} else {
		s.line("allow networks", joinAny(c.SMTP.Networks)+" (may send without AUTH)")
	}
	s.line("insecure AUTH", yesNo(c.SMTP.AllowInsecureAuth, "allowed without TLS", "only over TLS or loopback"))
	s.line("X-Relay-Unit", yesNo(c.SMTP.TrustUnitHeader, "honoured from allowed networks", "ignored"))
	s.line("limits", fmt.Sprintf("%d bytes, %d recipients, %s per command",
		c.SMTP.MaxMessageBytes, c.SMTP.MaxRecipients, dur(c.SMTP.Timeout)))
	s.line("rate per network", rate(c.SMTP.NetworkLimit))
	if len(c.SMTP.ProxyFrom) > 0 {
		s.line("PROXY protocol", "from "+joinAny(c.SMTP.ProxyFrom))
	} else {
		s.line("PROXY protocol", "off")
	}

	s.section("Users")
	if len(c.Users) == 0 {
		s.item("none: AUTH is off")
	} else {
		t := s.table("NAME", "UNIT", "RATE")
		for _, u := range c.Users {
			t.row(u.Name, orDash(u.Unit), rate(u.Limit))
		}
		t.flush()
	}

	s.section("Units")
	if len(c.Units) == 0 {
		s.item("none")
	} else {
		// Each unit with what applies to it; (parentheses) mark values inherited from
		// [sender], as policy resolves them.
		t := s.table("NAME", "FALLBACK", "BOUNCE", "ALLOWED DOMAINS", "DISPLAY NAME")
		for _, u := range c.Units {
			fallback := orElse(u.Fallback, "("+c.Sender.Fallback+")")
			bounce := u.BounceAddress
			switch {
			case bounce != "":
			case c.Sender.BounceAddress != "":
				bounce = "(" + c.Sender.BounceAddress + ")"
			default:
				bounce = "(" + orElse(u.Fallback, c.Sender.Fallback) + ")"
			}
			display := fmt.Sprintf("(%q)", c.Sender.DisplayName)
			if u.DisplayName != "" {
				display = fmt.Sprintf("%q", u.DisplayName)
			}
			t.row(u.Name, fallback, bounce, orDash(strings.Join(u.Domains, ", ")), display)
		}
		t.flush()
		s.item("(inherited from [sender])")
	}

	s.section("Sender")
	s.line("allowed domains", orElse(strings.Join(c.Sender.Domains, ", "), "none"))
	s.line("fallback", c.Sender.Fallback)
	s.line("display name", fmt.Sprintf("%q", c.Sender.DisplayName))
	s.line("bounce address", orElse(c.Sender.BounceAddress, "the fallback that applies"))
	s.line("reply-to original", yesNo(c.Sender.ReplyToOriginal, "yes, when the message has none", "no"))
	s.line("original header", orElse(c.Sender.OriginalHeader, "none"))

	s.section("SPF")
	ips := orElse(joinAny(c.SPF.IPs), "none")
	if c.SPF.Enabled {
		s.line("check", "on")
		s.line("sending IPs", ips)
		s.line("timeout", dur(c.SPF.Timeout))
		s.line("on temperror", c.SPF.OnTempError)
		s.line("cache", fmt.Sprintf("%s to %s", dur(c.SPF.CacheMinTTL), dur(c.SPF.CacheMaxTTL)))
	} else {
		s.line("check", "off")
		s.line("sending IPs", ips)
	}
	s.line("DNS servers", orElse(strings.Join(c.DNS.Servers, ", "), "from /etc/resolv.conf"))
	s.line("DNS timeout", dur(c.DNS.Timeout))
	if c.Doctor.SPFInclude != "" {
		s.line("doctor include", c.Doctor.SPFInclude)
	}

	s.section("DKIM")
	s.line("signing domain", c.DKIM.Domain+" (when the From domain is not signable)")
	s.line("delegation check", yesNo(c.DKIM.DelegationCheck, "on", "off"))
	for i, l := range wrap(c.DKIM.Headers, 60) {
		s.line(yesNo(i == 0, "headers", ""), l)
	}
	t := s.table("DNS RECORD (TXT)", "KEY", "USED FOR", "FILE")
	t.row(c.DKIM.Selector+"._domainkey."+c.DKIM.Domain, keyType(c.DKIM.Signer), "default", c.DKIM.PrivateKey)
	for _, k := range c.DKIM.Keys {
		t.row(k.Selector+"._domainkey."+k.Domain, keyType(k.Signer), k.Domain, k.PrivateKey)
	}
	t.flush()

	s.section("Upstream")
	s.line("address", c.Upstream.Address)
	if strings.HasPrefix(c.Upstream.Address, "file:") {
		s.line("delivery", "each message is written there as a file; nothing is sent")
	} else {
		s.line("tls", c.Upstream.TLS)
		switch {
		case c.Upstream.Username == "":
			s.line("auth", "none")
		case c.Upstream.PasswordEnv != "":
			s.line("auth", fmt.Sprintf("%s, password from $%s", c.Upstream.Username, c.Upstream.PasswordEnv))
		default:
			s.line("auth", fmt.Sprintf("%s, password from %s", c.Upstream.Username, c.Upstream.PasswordFile))
		}
		s.line("connections", fmt.Sprintf("up to %d, timeout %s", c.Upstream.MaxConnections, dur(c.Upstream.Timeout)))
	}

	s.section("Queue")
	if c.Queue.Mode == "direct" {
		s.line("mode", "direct (250 only after the upstream accepted)")
	} else {
		s.line("mode", "spool")
	}
	s.line("dir", c.Queue.Dir)
	s.line("retry", fmt.Sprintf("%s to %s, bounce after %s", dur(c.Queue.RetryMin), dur(c.Queue.RetryMax), dur(c.Queue.MaxAge)))

	s.section("Operations")
	s.line("HTTP", orOff(c.HTTP.Listen))
	s.line("log", c.Log.Format+", "+c.Log.Level)

	if len(c.Warnings) > 0 {
		s.section("Warnings")
		for _, w := range c.Warnings {
			s.item(w)
		}
	}
}

type summary struct{ w io.Writer }

// labelWidth fits the longest label, so every value starts in one column.
const labelWidth = 18

func (s *summary) section(name string) { fmt.Fprintf(s.w, "\n%s\n", name) }
func (s *summary) line(label, value string) {
	fmt.Fprintf(s.w, "  %-*s %s\n", labelWidth, label, value)
}
func (s *summary) item(text string) { fmt.Fprintf(s.w, "  %s\n", text) }

type table struct{ tw *tabwriter.Writer }

func (s *summary) table(header ...string) table {
	t := table{tabwriter.NewWriter(s.w, 0, 0, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t table) row(cells ...string) { fmt.Fprintf(t.tw, "  %s\n", strings.Join(cells, "\t")) }
func (t table) flush()              { t.tw.Flush() }

func keyType(k crypto.Signer) string {
	if k == nil {
		return "-"
	}
	if r, ok := k.Public().(*rsa.PublicKey); ok {
		return fmt.Sprintf("rsa %d", r.N.BitLen())
	}
	return dkimkey.Algo(k.Public())
}

func certNames(c *Config) string {
	leaf := c.SMTP.Certificate.Leaf
	if leaf == nil {
		return ""
	}
	names := leaf.DNSNames
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = []string{leaf.Subject.CommonName}
	}
	return fmt.Sprintf("(%s; expires %s)", strings.Join(names, ", "), leaf.NotAfter.UTC().Format(time.DateOnly))
}

// wrap joins words with spaces into lines of at most width bytes (a longer word gets a
// line of its own).
func wrap(words []string, width int) []string {
	var lines []string
	cur := ""
	for _, w := range words {
		if cur != "" && len(cur)+1+len(w) > width {
			lines = append(lines, cur)
			cur = ""
		}
		cur = strings.TrimPrefix(cur+" "+w, " ")
	}
	return append(lines, cur)
}

func rate(r Rate) string {
	if r.Zero() {
		return "unlimited"
	}
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[r.Per]
	return fmt.Sprintf("%d/%s", r.N, unit)
}

// dur writes 5m rather than 5m0s.
func dur(d Duration) string {
	s := d.Duration.String()
	for _, zero := range []string{"0s", "0m"} {
		if strings.HasSuffix(s, "m"+zero) || strings.HasSuffix(s, "h"+zero) {
			s = strings.TrimSuffix(s, zero)
		}
	}
	return s
}

func joinAny[T fmt.Stringer](list []T) string {
	out := make([]string, len(list))
	for i, v := range list {
		out[i] = v.String()
	}
	return strings.Join(out, ", ")
}

func yesNo(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

func orElse(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

func orOff(s string) string  { return orElse(s, "off") }
func orDash(s string) string { return orElse(s, "-") }
