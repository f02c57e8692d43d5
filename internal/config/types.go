package config

import (
	"crypto"
	"crypto/tls"
	"fmt"
	"net/netip"
	"time"
)

// Config is the whole relay configuration (SPEC §3). Field names follow the TOML keys.
// Load fills the derived fields (those tagged `toml:"-"`) after validation, so the rest of
// the relay never re-parses strings.
type Config struct {
	Hostname string   `toml:"hostname"`
	SMTP     SMTP     `toml:"smtp"`
	Users    []User   `toml:"users"`
	Sender   Sender   `toml:"sender"`
	Units    []Unit   `toml:"units"`
	SPF      SPF      `toml:"spf"`
	DNS      DNS      `toml:"dns"`
	DKIM     DKIM     `toml:"dkim"`
	Upstream Upstream `toml:"upstream"`
	Queue    Queue    `toml:"queue"`
	Doctor   Doctor   `toml:"doctor"`
	HTTP     HTTP     `toml:"http"`
	Log      Log      `toml:"log"`

	// Path is the file the config was loaded from; Dir its directory, against which
	// relative paths (keys, spool, outbox) are resolved.
	Path string `toml:"-"`
	Dir  string `toml:"-"`

	// Warnings are findings that do not stop the relay (an RSA key under 2048 bits, a
	// world-readable password file): `relay check` prints them, serve logs them.
	Warnings []string `toml:"-"`
}

type SMTP struct {
	Listen            string   `toml:"listen"`
	ImplicitTLSListen string   `toml:"implicit_tls_listen"`
	TLSCert           string   `toml:"tls_cert"`
	TLSKey            string   `toml:"tls_key"`
	MaxMessageBytes   int64    `toml:"max_message_bytes"`
	MaxRecipients     int      `toml:"max_recipients"`
	Timeout           Duration `toml:"timeout"`
	AllowNetworks     []string `toml:"allow_networks"`
	AllowInsecureAuth bool     `toml:"allow_insecure_auth"`
	TrustUnitHeader   bool     `toml:"trust_unit_header"`
	RatePerNetwork    string   `toml:"rate_per_network"`
	ProxyProtocolFrom []string `toml:"proxy_protocol_from"`
	BareNewline       string   `toml:"bare_newline"` // "normalize" | "reject"
	MaxHeaderBytes    int64    `toml:"max_header_bytes"`
	MaxConnections    int      `toml:"max_connections"`
	MaxConnectionsIP  int      `toml:"max_connections_per_ip"`
	AuthFailures      int      `toml:"auth_failures"`

	Networks     []netip.Prefix `toml:"-"` // parsed AllowNetworks
	ProxyFrom    []netip.Prefix `toml:"-"` // parsed ProxyProtocolFrom
	NetworkLimit Rate           `toml:"-"` // parsed RatePerNetwork (zero: unlimited)

	// Certificate is TLSCert/TLSKey loaded at Load time (nil without them), so a bad file
	// is refused before the relay starts, and a SIGHUP reload swaps it with the rest.
	Certificate *tls.Certificate `toml:"-"`
}

type User struct {
	Name         string `toml:"name"`
	PasswordHash string `toml:"password_hash"`
	Unit         string `toml:"unit"`
	Rate         string `toml:"rate"`

	Limit Rate `toml:"-"` // parsed Rate (zero: unlimited)
}

type Sender struct {
	AllowedDomains  []string `toml:"allowed_domains"`
	Fallback        string   `toml:"fallback"`
	DisplayName     string   `toml:"display_name"`
	ReplyToOriginal bool     `toml:"reply_to_original"`
	OriginalHeader  string   `toml:"original_header"`
	BounceAddress   string   `toml:"bounce_address"`

	Domains []string `toml:"-"` // AllowedDomains normalised: lower-case A-labels, "*." kept
}

type Unit struct {
	Name           string   `toml:"name"`
	Fallback       string   `toml:"fallback"`
	AllowedDomains []string `toml:"allowed_domains"`
	DisplayName    string   `toml:"display_name"`
	BounceAddress  string   `toml:"bounce_address"`

	Domains []string `toml:"-"` // AllowedDomains normalised like Sender.Domains
}

type SPF struct {
	Enabled     bool     `toml:"enabled"`
	SendingIPs  []string `toml:"sending_ips"`
	Timeout     Duration `toml:"timeout"`
	OnTempError string   `toml:"on_temperror"` // "fallback" | "defer"
	CacheMinTTL Duration `toml:"cache_min_ttl"`
	CacheMaxTTL Duration `toml:"cache_max_ttl"`

	IPs []netip.Addr `toml:"-"` // parsed SendingIPs
}

type DNS struct {
	Servers []string `toml:"servers"` // host:port; empty: /etc/resolv.conf
	Timeout Duration `toml:"timeout"`
}

type DKIM struct {
	Selector        string    `toml:"selector"`
	PrivateKey      string    `toml:"private_key"`
	Domain          string    `toml:"domain"`
	DelegationCheck bool      `toml:"delegation_check"`
	Headers         []string  `toml:"headers"`
	Keys            []DKIMKey `toml:"keys"`

	Signer crypto.Signer `toml:"-"` // PrivateKey loaded (RSA or Ed25519)
}

type DKIMKey struct {
	Domain     string `toml:"domain"`
	Selector   string `toml:"selector"`
	PrivateKey string `toml:"private_key"`

	Signer crypto.Signer `toml:"-"` // PrivateKey loaded (RSA or Ed25519)
}

type Upstream struct {
	Address        string   `toml:"address"` // host:port or "file:DIR"
	TLS            string   `toml:"tls"`     // starttls | implicit | opportunistic | none
	Username       string   `toml:"username"`
	PasswordEnv    string   `toml:"password_env"`
	PasswordFile   string   `toml:"password_file"`
	MaxConnections int      `toml:"max_connections"`
	Timeout        Duration `toml:"timeout"`

	Password string `toml:"-"` // read from PasswordEnv or PasswordFile; never logged
}

type Queue struct {
	Mode     string   `toml:"mode"` // spool | direct
	Dir      string   `toml:"dir"`
	MaxAge   Duration `toml:"max_age"`
	RetryMin Duration `toml:"retry_min"`
	RetryMax Duration `toml:"retry_max"`
}

type Doctor struct {
	SPFInclude string `toml:"spf_include"`
}

type HTTP struct {
	Listen string `toml:"listen"`
	// Username and PasswordHash (bcrypt), both or neither: HTTP basic auth for every path
	// but /healthz and /readyz.
	Username     string `toml:"username"`
	PasswordHash string `toml:"password_hash"`
	// ReadyWithoutUpstream leaves the upstream out of /readyz (spool mode behind a load
	// balancer: an upstream outage then does not take every instance out of rotation).
	ReadyWithoutUpstream bool `toml:"ready_without_upstream"`
}

type Log struct {
	Format string `toml:"format"` // text | json
	Level  string `toml:"level"`
}

// Duration is a time.Duration written in TOML as a Go duration string ("5m", "72h").
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"30s\", \"5m\", \"72h\")", b)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Rate is a message rate limit parsed from "N/s", "N/m" or "N/h"; bursts of N are allowed.
type Rate struct {
	N   int
	Per time.Duration
}

// Zero reports whether no limit is set.
func (r Rate) Zero() bool { return r.N == 0 }
