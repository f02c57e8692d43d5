package config

import (
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"fmt"
	"net"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/crypto/bcrypt"

	"relay/internal/dkimkey"
	"relay/internal/names"
)

// MaxRecipientsLimit is the largest smtp.max_recipients: internal/spool's MaxRecipients,
// which its tests hold equal.
const MaxRecipientsLimit = 1000

// validate checks every key of a decoded c, fills its derived fields and the defaults that
// depend on other keys, and resolves relative paths against c.Dir. It reports all it finds.
func validate(c *Config, ps *problems) {
	v := &validator{c: c, ps: ps}
	v.hostname()
	v.smtp()
	units := v.units() // before users, who name them
	v.users(units)
	v.sender()
	v.spf()
	v.dns()
	v.dkim()
	v.upstream()
	v.queue()
	if c.Doctor.SPFInclude != "" {
		if _, err := domainName(c.Doctor.SPFInclude); err != nil {
			ps.add("doctor.spf_include", "%v", err)
		}
	}
	v.http()
	v.oneOf("log.format", c.Log.Format, "text", "json")
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
}

type validator struct {
	c  *Config
	ps *problems
}

func (v *validator) hostname() {
	if v.c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			v.ps.add("hostname", "not set and the OS host name is unknown (%v)", err)
			return
		}
		v.c.Hostname = h
	}
	if _, err := domainName(v.c.Hostname); err != nil {
		v.ps.add("hostname", "%v (it is the EHLO name: set a fully qualified domain name)", err)
	}
}

func (v *validator) smtp() {
	s := &v.c.SMTP
	if s.Listen == "" && s.ImplicitTLSListen == "" {
		v.ps.add("smtp.listen", "no listener: set listen or implicit_tls_listen")
	}
	v.listen("smtp.listen", s.Listen)
	v.listen("smtp.implicit_tls_listen", s.ImplicitTLSListen)
	switch {
	case s.TLSCert == "" && s.TLSKey == "":
		if s.ImplicitTLSListen != "" {
			v.ps.add("smtp.implicit_tls_listen", "needs a certificate: set tls_cert and tls_key")
		}
	case s.TLSCert == "":
		v.ps.addAt("smtp.tls_cert", "smtp.tls_key", "required with tls_key")
	case s.TLSKey == "":
		v.ps.addAt("smtp.tls_key", "smtp.tls_cert", "required with tls_cert")
	default:
		s.TLSCert, s.TLSKey = v.path(s.TLSCert), v.path(s.TLSKey)
		cert, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey)
		if err != nil {
			v.ps.add("smtp.tls_cert", "cannot load the certificate and key: %v", err)
		} else {
			s.Certificate = &cert
		}
	}
	if s.MaxMessageBytes <= 0 {
		v.ps.add("smtp.max_message_bytes", "must be positive")
	}
	if s.MaxRecipients <= 0 {
		v.ps.add("smtp.max_recipients", "must be positive")
	} else if s.MaxRecipients > MaxRecipientsLimit {
		v.ps.add("smtp.max_recipients", "%d is over %d, the most the spool keeps per message", s.MaxRecipients, MaxRecipientsLimit)
	}
	v.positive("smtp.timeout", s.Timeout)
	v.oneOf("smtp.bare_newline", s.BareNewline, "normalize", "reject")
	if s.MaxHeaderBytes <= 0 {
		v.ps.add("smtp.max_header_bytes", "must be positive")
	}
	if s.MaxConnections <= 0 {
		v.ps.add("smtp.max_connections", "must be positive")
	}
	if s.MaxConnectionsIP <= 0 {
		v.ps.add("smtp.max_connections_per_ip", "must be positive")
	} else if s.MaxConnections > 0 && s.MaxConnectionsIP > s.MaxConnections {
		v.ps.add("smtp.max_connections_per_ip", "%d is more than max_connections (%d)", s.MaxConnectionsIP, s.MaxConnections)
	}
	if s.AuthFailures <= 0 {
		v.ps.add("smtp.auth_failures", "must be positive")
	}
	s.Networks = v.prefixes("smtp.allow_networks", s.AllowNetworks)
	s.NetworkLimit = v.rate("smtp.rate_per_network", s.RatePerNetwork)
	s.ProxyFrom = v.prefixes("smtp.proxy_protocol_from", s.ProxyProtocolFrom)
}

// units returns the set of unit names, lower-cased: policy matches them without case.
func (v *validator) units() map[string]bool {
	names := map[string]bool{}
	for i := range v.c.Units {
		u := &v.c.Units[i]
		key := fmt.Sprintf("units[%d]", i)
		switch {
		case u.Name == "":
			v.ps.add(key+".name", "required")
		case strings.TrimSpace(u.Name) != u.Name || strings.ContainsFunc(u.Name, unicode.IsControl):
			v.ps.add(key+".name", "must not have leading or trailing spaces or control characters")
		case names[strings.ToLower(u.Name)]:
			v.ps.add(key+".name", "unit %q is defined twice", u.Name)
		}
		names[strings.ToLower(u.Name)] = true
		v.address(key+".fallback", u.Fallback)
		v.address(key+".bounce_address", u.BounceAddress)
		v.displayName(key+".display_name", u.DisplayName)
		u.Domains = v.domains(key+".allowed_domains", u.AllowedDomains)
	}
	return names
}

func (v *validator) users(units map[string]bool) {
	seen := map[string]bool{}
	for i := range v.c.Users {
		u := &v.c.Users[i]
		key := fmt.Sprintf("users[%d]", i)
		switch {
		case u.Name == "":
			v.ps.add(key+".name", "required")
		case seen[strings.ToLower(u.Name)]:
			v.ps.add(key+".name", "user %q is defined twice", u.Name)
		}
		seen[strings.ToLower(u.Name)] = true
		if u.PasswordHash == "" {
			v.ps.add(key+".password_hash", "required (make one with relay hash-password)")
		} else {
			v.bcryptHash(key+".password_hash", u.PasswordHash)
		}
		if u.Unit != "" && !units[strings.ToLower(u.Unit)] {
			v.ps.add(key+".unit", "unknown unit %q (define it in a [[units]] table)", u.Unit)
		}
		u.Limit = v.rate(key+".rate", u.Rate)
	}
}

// bcryptHash checks a password hash; the messages never quote it: it is a secret too.
func (v *validator) bcryptHash(key, h string) {
	switch {
	case !strings.HasPrefix(h, "$2a$") && !strings.HasPrefix(h, "$2b$") && !strings.HasPrefix(h, "$2y$"):
		v.ps.add(key, "not a bcrypt hash (want $2a$, $2b$ or $2y$; make one with relay hash-password)")
	default:
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			v.ps.add(key, "not a valid bcrypt hash (make one with relay hash-password)")
		}
	}
}

// http checks [http]: basic auth takes both keys or neither, and an admin page reachable
// from other hosts without a password is worth a warning.
func (v *validator) http() {
	h := &v.c.HTTP
	v.listen("http.listen", h.Listen)
	switch {
	case h.Username != "" && h.PasswordHash == "":
		v.ps.addAt("http.password_hash", "http.username", "required with username (make one with relay hash-password)")
	case h.Username == "" && h.PasswordHash != "":
		v.ps.addAt("http.username", "http.password_hash", "required with password_hash")
	case h.PasswordHash != "":
		v.bcryptHash("http.password_hash", h.PasswordHash)
	}
	if h.Listen != "" && h.Username == "" && !loopback(h.Listen) {
		v.c.Warnings = append(v.c.Warnings, fmt.Sprintf("http.listen %q is not a loopback address and [http] has no username: the admin page, /api/preview, /api/dns and /metrics are open to whoever reaches it", h.Listen))
	}
}

// loopback reports whether addr (host:port) listens on loopback only; "" (every address)
// and host names other than localhost do not.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (v *validator) sender() {
	s := &v.c.Sender
	s.Domains = v.domains("sender.allowed_domains", s.AllowedDomains)
	if s.Fallback == "" {
		v.ps.add("sender.fallback", "required: the From address used when the original may not be kept")
	}
	v.address("sender.fallback", s.Fallback)
	v.displayName("sender.display_name", s.DisplayName)
	if s.OriginalHeader != "" && !names.FieldName(s.OriginalHeader) {
		v.ps.add("sender.original_header", "%q is not a header field name", s.OriginalHeader)
	} else if managedHeader(s.OriginalHeader) {
		v.ps.add("sender.original_header", "%q is a header the relay writes itself; pick another name, e.g. \"X-Original-From\"", s.OriginalHeader)
	}
	v.address("sender.bounce_address", s.BounceAddress)
}

func (v *validator) spf() {
	s := &v.c.SPF
	s.IPs = nil
	for i, a := range s.SendingIPs {
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.Zone() != "" {
			v.ps.add(fmt.Sprintf("spf.sending_ips[%d]", i), "%q is not an IP address", a)
			continue
		}
		s.IPs = append(s.IPs, ip.Unmap())
	}
	if s.Enabled && len(s.SendingIPs) == 0 {
		v.ps.addAt("spf.sending_ips", "spf.enabled", "required when spf.enabled is true: the public addresses receivers see the relay send from")
	}
	v.positive("spf.timeout", s.Timeout)
	v.oneOf("spf.on_temperror", s.OnTempError, "fallback", "defer")
	if s.CacheMinTTL.Duration > s.CacheMaxTTL.Duration {
		v.ps.add("spf.cache_min_ttl", "%v is more than cache_max_ttl %v", s.CacheMinTTL.Duration, s.CacheMaxTTL.Duration)
	}
}

func (v *validator) dns() {
	d := &v.c.DNS
	for i, srv := range d.Servers {
		key := fmt.Sprintf("dns.servers[%d]", i)
		host, port, err := net.SplitHostPort(srv)
		if err != nil { // no port: the DNS one
			host, port = strings.TrimSuffix(strings.TrimPrefix(srv, "["), "]"), "53"
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			// A name would need a resolver to find the resolver.
			v.ps.add(key, "%q: want an IP address with an optional port, e.g. \"127.0.0.1:5353\"", srv)
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			v.ps.add(key, "%q: bad port", srv)
			continue
		}
		d.Servers[i] = net.JoinHostPort(ip.String(), port)
	}
	v.positive("dns.timeout", d.Timeout)
}

func (v *validator) dkim() {
	d := &v.c.DKIM
	if err := selector(d.Selector); err != nil {
		v.ps.add("dkim.selector", "%v", err)
	}
	if d.PrivateKey == "" {
		v.ps.add("dkim.private_key", "required: the default signing key (make one with relay keygen)")
	} else {
		d.PrivateKey = v.path(d.PrivateKey)
		d.Signer = v.key("dkim.private_key", d.PrivateKey)
	}
	if d.Domain == "" {
		// SPEC §3: the fallback's domain; an invalid fallback was reported already.
		if i := strings.LastIndexByte(v.c.Sender.Fallback, '@'); i >= 0 {
			d.Domain, _ = names.Domain(v.c.Sender.Fallback[i+1:])
		}
	} else if n, err := domainName(d.Domain); err != nil {
		v.ps.add("dkim.domain", "%v", err)
	} else {
		d.Domain = n
	}
	if len(d.Headers) == 0 {
		d.Headers = DefaultHeaders()
	}
	from := false
	for i, h := range d.Headers {
		if !names.FieldName(h) {
			v.ps.add(fmt.Sprintf("dkim.headers[%d]", i), "%q is not a header field name", h)
		}
		from = from || strings.EqualFold(h, "From")
	}
	if !from {
		v.ps.add("dkim.headers", "must include From (RFC 6376 §5.4)")
	}
	seen := map[string]bool{}
	for i := range d.Keys {
		k := &d.Keys[i]
		key := fmt.Sprintf("dkim.keys[%d]", i)
		if k.Domain == "" {
			v.ps.add(key+".domain", "required")
		} else if n, err := domainName(k.Domain); err != nil {
			v.ps.add(key+".domain", "%v", err)
		} else {
			k.Domain = n
		}
		if k.Selector == "" {
			v.ps.add(key+".selector", "required")
		} else if err := selector(k.Selector); err != nil {
			v.ps.add(key+".selector", "%v", err)
		}
		if id := k.Selector + "._domainkey." + k.Domain; k.Domain != "" && k.Selector != "" {
			if seen[strings.ToLower(id)] {
				v.ps.add(key, "a second key for %s: one DNS record cannot publish two keys", id)
			}
			seen[strings.ToLower(id)] = true
		}
		if k.PrivateKey == "" {
			v.ps.add(key+".private_key", "required")
		} else {
			k.PrivateKey = v.path(k.PrivateKey)
			k.Signer = v.key(key+".private_key", k.PrivateKey)
		}
	}
}

// DefaultHeaders is the h= list when [dkim] headers is empty (SPEC §3): the fields a
// receiver shows or acts on (RFC 6376 §5.4.1), plus the one-click unsubscribe pair, whose
// POST target must not be replaceable (RFC 8058 §4).
func DefaultHeaders() []string {
	return []string{
		"From", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version",
		"Content-Type", "Content-Transfer-Encoding", "In-Reply-To", "References",
		"List-Unsubscribe", "List-Unsubscribe-Post",
	}
}

func (v *validator) upstream() {
	u := &v.c.Upstream
	if dir, ok := strings.CutPrefix(u.Address, "file:"); ok {
		if dir == "" {
			v.ps.add("upstream.address", `"file:" needs a directory, e.g. "file:./outbox"`)
		} else {
			u.Address = "file:" + v.path(dir)
		}
	} else if u.Address == "" {
		v.ps.add("upstream.address", `required: the smarthost as host:port, or "file:DIR"`)
	} else if host, port, err := net.SplitHostPort(u.Address); err != nil || host == "" || !portNumber(port, false) {
		v.ps.add("upstream.address", `%q: want host:port (e.g. "smtp.provider.net:587") or "file:DIR"`, u.Address)
	}
	v.oneOf("upstream.tls", u.TLS, "starttls", "implicit", "opportunistic", "none")
	switch {
	case u.PasswordEnv != "" && u.PasswordFile != "":
		v.ps.add("upstream.password_file", "set password_env or password_file, not both")
	case u.PasswordEnv != "":
		p, ok := os.LookupEnv(u.PasswordEnv)
		switch {
		case !ok:
			v.ps.add("upstream.password_env", "environment variable %s is not set", u.PasswordEnv)
		case p == "":
			v.ps.add("upstream.password_env", "environment variable %s is empty", u.PasswordEnv)
		}
		u.Password = p
	case u.PasswordFile != "":
		u.PasswordFile = v.path(u.PasswordFile)
		u.Password = v.secretFile("upstream.password_file", u.PasswordFile)
	}
	if u.Username == "" && (u.PasswordEnv != "" || u.PasswordFile != "") {
		v.ps.addAt("upstream.username", "upstream.password_"+yesNo(u.PasswordEnv != "", "env", "file"), "required with a password")
	}
	if u.Username != "" && u.PasswordEnv == "" && u.PasswordFile == "" {
		v.ps.add("upstream.username", "needs password_env or password_file")
	}
	if u.Username != "" && u.TLS == "none" && !strings.HasPrefix(u.Address, "file:") {
		// SPEC §7: only tls = "none" lets AUTH go out without TLS, and it does as told; the
		// admin hears once, here, what that costs.
		v.c.Warnings = append(v.c.Warnings, fmt.Sprintf(`upstream.tls = "none" with upstream.username %q: the password crosses the network to %s in clear (AUTH PLAIN and LOGIN are only base64); use "starttls" or "implicit" unless that path is trusted`, u.Username, u.Address))
	}
	if u.MaxConnections <= 0 {
		v.ps.add("upstream.max_connections", "must be positive")
	}
	v.positive("upstream.timeout", u.Timeout)
}

// secretFile reads a password file. The content is never quoted in a message.
func (v *validator) secretFile(key, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		v.ps.add(key, "cannot read: %v", err)
		return ""
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		v.ps.add(key, "%s is empty", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o004 != 0 {
		v.c.Warnings = append(v.c.Warnings, fmt.Sprintf("upstream.password_file %s is readable by every user (mode %v)", path, fi.Mode().Perm()))
	}
	return p
}

func (v *validator) queue() {
	q := &v.c.Queue
	v.oneOf("queue.mode", q.Mode, "spool", "direct")
	if q.Dir == "" {
		v.ps.add("queue.dir", "required")
	} else {
		q.Dir = v.path(q.Dir)
	}
	v.positive("queue.max_age", q.MaxAge)
	v.positive("queue.retry_min", q.RetryMin)
	v.positive("queue.retry_max", q.RetryMax)
	if q.RetryMin.Duration > q.RetryMax.Duration {
		v.ps.add("queue.retry_min", "%v is more than retry_max %v", q.RetryMin.Duration, q.RetryMax.Duration)
	}
}

// path resolves p against the directory of the config file, so the relay finds the same
// files whatever its working directory.
func (v *validator) path(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(v.c.Dir, p)
}

// key loads a DKIM private key; a short RSA key is a warning (RFC 8301 §3.2 wants 2048
// bits from signers, verifiers still accept 1024).
func (v *validator) key(key, path string) crypto.Signer {
	k, err := dkimkey.Load(path)
	if err != nil {
		if os.IsNotExist(err) {
			v.ps.add(key, "%s does not exist (make one with relay keygen)", path)
		} else {
			v.ps.add(key, "cannot load: %v", err)
		}
		return nil
	}
	if r, ok := k.Public().(*rsa.PublicKey); ok && r.N.BitLen() < 2048 {
		v.c.Warnings = append(v.c.Warnings, fmt.Sprintf("%s: RSA key of %d bits; use 2048 or more (RFC 8301)", key, r.N.BitLen()))
	}
	return k
}

func (v *validator) address(key, a string) {
	if a == "" {
		return
	}
	if err := addrSpec(a); err != nil {
		v.ps.add(key, "%v", err)
	}
}

// addrSpec accepts a bare address (RFC 5322 addr-spec), as the relay writes it into
// headers and MAIL FROM: no display name, no angle brackets, a real domain.
func addrSpec(a string) error {
	p, err := mail.ParseAddress(a)
	if err != nil {
		return fmt.Errorf("%q is not an email address (%s)", a, strings.TrimPrefix(err.Error(), "mail: "))
	}
	if p.Name != "" || p.Address != a {
		return fmt.Errorf("%q: want a bare address like noreply@example.net, without a name or <>", a)
	}
	if _, err := domainName(a[strings.LastIndexByte(a, '@')+1:]); err != nil {
		return fmt.Errorf("%q: %v", a, err)
	}
	return nil
}

// domains normalises an allowed_domains list: exact domains, or "*.parent" for any
// subdomain of parent.
func (v *validator) domains(key string, list []string) []string {
	var out []string
	for i, d := range list {
		rest, wild := strings.CutPrefix(strings.TrimSpace(d), "*.")
		if strings.Contains(rest, "*") {
			v.ps.add(fmt.Sprintf("%s[%d]", key, i), `%q: "*" is only allowed as a leading "*." (any subdomain)`, d)
			continue
		}
		n, err := domainName(rest)
		if err != nil {
			v.ps.add(fmt.Sprintf("%s[%d]", key, i), "%v", err)
			continue
		}
		if wild {
			n = "*." + n
		}
		out = append(out, n)
	}
	return out
}

// domainName normalises d (names.Domain) and checks it is a host name: dot-separated
// labels of letters, digits, "-" and "_" (for names like _spf.example.net).
func domainName(d string) (string, error) {
	n, err := names.Domain(d)
	if err != nil {
		return "", err
	}
	bad := fmt.Errorf("%q is not a valid domain name", d)
	if n == "" || len(n) > 253 {
		return "", bad
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", bad
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", bad
			}
		}
	}
	return n, nil
}

// selector checks a DKIM selector: one or more labels, like a domain (RFC 6376 §3.1).
func selector(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if n, err := domainName(s); err != nil || n != strings.ToLower(s) {
		return fmt.Errorf("%q is not a valid selector (letters, digits, \"-\" and dots)", s)
	}
	return nil
}

// displayName checks the placeholders of a display_name template.
func (v *validator) displayName(key, tmpl string) {
	if strings.ContainsFunc(tmpl, unicode.IsControl) {
		v.ps.add(key, "must not contain control characters")
	}
	rest := tmpl
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			return
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			v.ps.add(key, "unclosed %q", rest[i:])
			return
		}
		switch ph := rest[i : i+j+1]; ph {
		case "{name}", "{address}", "{unit}":
		default:
			v.ps.add(key, "unknown placeholder %s (want {name}, {address} or {unit})", ph)
		}
		rest = rest[i+j+1:]
	}
}

func (v *validator) prefixes(key string, list []string) []netip.Prefix {
	out := []netip.Prefix{}
	for i, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			// A bare address is a network of one.
			if a, aerr := netip.ParseAddr(s); aerr == nil && a.Zone() == "" {
				p, err = netip.PrefixFrom(a, a.BitLen()), nil
			}
		}
		if err != nil {
			v.ps.add(fmt.Sprintf("%s[%d]", key, i), "%q is not a CIDR network like \"10.0.0.0/8\" or an IP address", s)
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

// rate parses "N/s", "N/m" or "N/h"; "" is no limit.
func (v *validator) rate(key, s string) Rate {
	if s == "" {
		return Rate{}
	}
	n, unit, _ := strings.Cut(s, "/")
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	num, err := strconv.Atoi(n)
	if err != nil || num <= 0 || per == 0 {
		v.ps.add(key, `%q: want "N/s", "N/m" or "N/h" with N > 0, e.g. "120/m"`, s)
		return Rate{}
	}
	return Rate{N: num, Per: per}
}

// listen checks a listener address; "" is off.
func (v *validator) listen(key, addr string) {
	if addr == "" {
		return
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || !portNumber(port, true) {
		v.ps.add(key, "%q: want host:port, e.g. \"127.0.0.1:2525\" or \":465\"", addr)
	}
}

func portNumber(p string, zero bool) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n <= 65535 && (n > 0 || zero && n == 0)
}

func (v *validator) positive(key string, d Duration) {
	if d.Duration <= 0 {
		v.ps.add(key, "must be more than zero")
	}
}

func (v *validator) oneOf(key, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = strconv.Quote(a)
	}
	v.ps.add(key, "%q: want %s or %s", s, strings.Join(q[:len(q)-1], ", "), q[len(q)-1])
}

// managedHeader reports whether name is a field the relay adds, replaces or removes
// itself (SPEC §5, §6): recording the original From under such a name would clash.
func managedHeader(name string) bool {
	for _, h := range []string{"From", "Reply-To", "Sender", "Date", "Message-ID", "Received", "Bcc", "X-Relay-Unit", "DKIM-Signature"} {
		if strings.EqualFold(name, h) {
			return true
		}
	}
	return false
}
