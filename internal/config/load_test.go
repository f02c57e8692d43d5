package config_test

import (
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"relay/internal/config"
	"relay/internal/dkimkey"
)

// root is the repository root, where config.example.toml and testdata/keys live.
var root = func() string {
	r, err := filepath.Abs("../..")
	if err != nil {
		panic(err)
	}
	return r
}()

// writeConfig writes text as a config file in a fresh directory; KEYS in it becomes the
// directory of the repository's test keys.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.toml")
	text = strings.ReplaceAll(text, "KEYS", filepath.Join(root, "testdata", "keys"))
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	return path
}

func problems(t *testing.T, err error) []config.Problem {
	t.Helper()
	var errs *config.Errors
	require.True(t, errors.As(err, &errs), "error %v (%T) is not *config.Errors", err, err)
	require.NotEmpty(t, errs.Problems)
	return errs.Problems
}

// The example is the documentation: it must load as it is, from the repository root.
func TestLoadExample(t *testing.T) {
	c, err := config.Load(filepath.Join(root, "config.example.toml"))
	require.NoError(t, err)

	require.Equal(t, filepath.Join(root, "config.example.toml"), c.Path)
	require.Equal(t, root, c.Dir)
	require.Equal(t, "relay.example.net", c.Hostname)
	require.Equal(t, "127.0.0.1:2525", c.SMTP.Listen)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, c.SMTP.Networks)
	require.Nil(t, c.SMTP.Certificate)

	require.Len(t, c.Users, 1)
	require.Equal(t, "crm", c.Users[0].Name)
	require.Equal(t, "sales", c.Users[0].Unit)
	require.NoError(t, bcrypt.CompareHashAndPassword([]byte(c.Users[0].PasswordHash), []byte("crm-secret")),
		"the example's comment says the hash is of crm-secret")
	cost, err := bcrypt.Cost([]byte(c.Users[0].PasswordHash))
	require.NoError(t, err)
	require.Equal(t, 10, cost)

	require.Equal(t, []string{"example.com", "*.example.com"}, c.Sender.Domains)
	require.Equal(t, "noreply@example.net", c.Sender.Fallback)
	require.Equal(t, "{name} via Example", c.Sender.DisplayName)
	require.Len(t, c.Units, 1)
	require.Equal(t, "sales", c.Units[0].Name)
	require.Equal(t, "sales@example.com", c.Units[0].Fallback)

	require.False(t, c.SPF.Enabled)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("2001:db8::10")}, c.SPF.IPs)
	require.False(t, c.DKIM.DelegationCheck)

	require.Equal(t, "default", c.DKIM.Selector)
	require.Equal(t, "example.net", c.DKIM.Domain)
	require.Equal(t, filepath.Join(root, "testdata/keys/default.pem"), c.DKIM.PrivateKey)
	requireRSA(t, c.DKIM.Signer, 2048)
	require.Len(t, c.DKIM.Keys, 2)
	require.Equal(t, "example.com", c.DKIM.Keys[0].Domain)
	require.Equal(t, "s2026", c.DKIM.Keys[0].Selector)
	require.IsType(t, ed25519.PrivateKey{}, c.DKIM.Keys[0].Signer)
	require.Equal(t, "example.com", c.DKIM.Keys[1].Domain)
	require.Equal(t, "s2026r", c.DKIM.Keys[1].Selector)
	requireRSA(t, c.DKIM.Keys[1].Signer, 2048)

	require.Equal(t, "file:"+filepath.Join(root, "outbox"), c.Upstream.Address)
	require.Equal(t, "none", c.Upstream.TLS)
	require.Equal(t, "spool", c.Queue.Mode)
	require.Equal(t, filepath.Join(root, "spool"), c.Queue.Dir)
	require.Equal(t, "127.0.0.1:8025", c.HTTP.Listen)
	require.Empty(t, c.Warnings)
}

func requireRSA(t *testing.T, k any, bits int) {
	t.Helper()
	r, ok := k.(*rsa.PrivateKey)
	require.True(t, ok, "want an RSA key, got %T", k)
	require.Equal(t, bits, r.N.BitLen())
}

// The example must name every key Config knows, in the order of the struct (SPEC §3).
func TestExampleHasEveryKeyInOrder(t *testing.T) {
	var v map[string]any
	md, err := toml.DecodeFile(filepath.Join(root, "config.example.toml"), &v)
	require.NoError(t, err)
	var inFile []string
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		if s := k.String(); !seen[s] {
			seen[s] = true
			inFile = append(inFile, s)
		}
	}
	var want []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for f := range t.Fields() {
			tag := f.Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			key := tag
			if prefix != "" {
				key = prefix + "." + tag
			}
			want = append(want, key)
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[config.Duration]() {
				walk(ft, key)
			}
		}
	}
	walk(reflect.TypeFor[config.Config](), "")
	require.Equal(t, want, inFile)
}

// A file with only the required keys gets every SPEC §3 default.
func TestDefaults(t *testing.T) {
	dir := t.TempDir()
	key, err := os.ReadFile(filepath.Join(root, "testdata/keys/default.pem"))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "keys"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "keys/default.pem"), key, 0o600))
	path := filepath.Join(dir, "relay.toml")
	require.NoError(t, os.WriteFile(path, []byte(`
[sender]
fallback = "noreply@Relay.Example.NET"
[spf]
sending_ips = ["203.0.113.10"]
[dkim]
private_key = "keys/default.pem"
[upstream]
address = "smtp.provider.net:587"
`), 0o600))

	c, err := config.Load(path)
	require.NoError(t, err)
	host, err := os.Hostname()
	require.NoError(t, err)
	dur := func(n time.Duration) config.Duration { return config.Duration{Duration: n} }

	require.Equal(t, host, c.Hostname)
	require.Equal(t, config.SMTP{
		Listen:           "127.0.0.1:2525",
		MaxMessageBytes:  26214400,
		MaxRecipients:    100,
		Timeout:          dur(5 * time.Minute),
		AllowNetworks:    []string{"127.0.0.0/8", "::1/128"},
		BareNewline:      "normalize",
		MaxHeaderBytes:   1 << 20,
		MaxConnections:   1000,
		MaxConnectionsIP: 50,
		AuthFailures:     5,
		Networks:         []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		ProxyFrom:        []netip.Prefix{},
	}, c.SMTP)
	require.Empty(t, c.Users)
	require.Equal(t, config.Sender{
		Fallback:        "noreply@Relay.Example.NET",
		DisplayName:     "{name}",
		ReplyToOriginal: true,
		OriginalHeader:  "X-Original-From",
	}, c.Sender)
	require.Empty(t, c.Units)
	require.Equal(t, config.SPF{
		Enabled:     true,
		SendingIPs:  []string{"203.0.113.10"},
		Timeout:     dur(5 * time.Second),
		OnTempError: "fallback",
		CacheMinTTL: dur(time.Minute),
		CacheMaxTTL: dur(time.Hour),
		IPs:         []netip.Addr{netip.MustParseAddr("203.0.113.10")},
	}, c.SPF)
	require.Equal(t, config.DNS{Timeout: dur(2 * time.Second)}, c.DNS)

	require.Equal(t, "default", c.DKIM.Selector)
	require.Equal(t, "relay.example.net", c.DKIM.Domain, "default: the fallback's domain, normalised")
	require.True(t, c.DKIM.DelegationCheck)
	require.Equal(t, filepath.Join(dir, "keys/default.pem"), c.DKIM.PrivateKey, "resolved against the file's directory")
	require.NotNil(t, c.DKIM.Signer)
	require.Equal(t, []string{"From", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version",
		"Content-Type", "Content-Transfer-Encoding", "In-Reply-To", "References",
		"List-Unsubscribe", "List-Unsubscribe-Post"}, c.DKIM.Headers)
	require.Empty(t, c.DKIM.Keys)

	require.Equal(t, config.Upstream{
		Address:        "smtp.provider.net:587",
		TLS:            "starttls",
		MaxConnections: 8,
		Timeout:        dur(time.Minute),
	}, c.Upstream)
	require.Equal(t, config.Queue{
		Mode:     "spool",
		Dir:      filepath.Join(dir, "spool"),
		MaxAge:   dur(72 * time.Hour),
		RetryMin: dur(30 * time.Second),
		RetryMax: dur(30 * time.Minute),
	}, c.Queue)
	require.Equal(t, config.Doctor{}, c.Doctor)
	require.Equal(t, config.HTTP{}, c.HTTP)
	require.Equal(t, config.Log{Format: "text", Level: "info"}, c.Log)
	require.Equal(t, path, c.Path)
	require.Equal(t, dir, c.Dir)
	require.Empty(t, c.Warnings)
}

// An explicit empty value is not the same as an absent key.
func TestExplicitEmpty(t *testing.T) {
	c, err := config.Load(writeConfig(t, `
[smtp]
allow_networks = []
[sender]
fallback = "noreply@example.net"
display_name = ""
original_header = ""
[spf]
enabled = false
[dkim]
private_key = "KEYS/default.pem"
headers = []
[upstream]
address = "file:/tmp/outbox"
`))
	require.NoError(t, err)
	require.Empty(t, c.SMTP.Networks, "allow_networks = [] means AUTH is always required")
	require.Equal(t, "", c.Sender.DisplayName)
	require.Equal(t, "", c.Sender.OriginalHeader)
	require.Equal(t, "From", c.DKIM.Headers[0], "headers = [] is the default list (SPEC §3)")
	require.Equal(t, "file:/tmp/outbox", c.Upstream.Address)
}

func TestDerivedFields(t *testing.T) {
	c, err := config.Load(writeConfig(t, `
[smtp]
allow_networks = ["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"]
rate_per_network = "600/m"
[[users]]
name = "a"
password_hash = "$2a$10$IfY12YzGpAiWSIkxkRPVVubQuOSIbFm2uNJITpGTMHNVgibia9a6a"
rate = "5/s"
[sender]
allowed_domains = ["Example.COM.", "*.Bücher.example"]
fallback = "noreply@example.net"
[[units]]
name = "x"
allowed_domains = ["partner.example"]
[spf]
sending_ips = ["::ffff:203.0.113.10"]
[dns]
servers = ["127.0.0.1", "::1", "[::1]:5353", "192.0.2.1:53"]
[dkim]
private_key = "KEYS/default.pem"
[[dkim.keys]]
domain = "Example.COM"
selector = "s1"
private_key = "KEYS/example.com.rsa.pem"
[upstream]
address = "smtp.provider.net:587"
`))
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32"),
	}, c.SMTP.Networks)
	require.Equal(t, config.Rate{N: 600, Per: time.Minute}, c.SMTP.NetworkLimit)
	require.Equal(t, config.Rate{N: 5, Per: time.Second}, c.Users[0].Limit)
	require.Equal(t, []string{"example.com", "*.xn--bcher-kva.example"}, c.Sender.Domains)
	require.Equal(t, []string{"partner.example"}, c.Units[0].Domains)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("203.0.113.10")}, c.SPF.IPs)
	require.Equal(t, []string{"127.0.0.1:53", "[::1]:53", "[::1]:5353", "192.0.2.1:53"}, c.DNS.Servers)
	require.Equal(t, "example.com", c.DKIM.Keys[0].Domain)
	requireRSA(t, c.DKIM.Keys[0].Signer, 2048)
}

func TestUpstreamPassword(t *testing.T) {
	base := `
[sender]
fallback = "noreply@example.net"
[spf]
enabled = false
[dkim]
private_key = "KEYS/default.pem"
[upstream]
address = "smtp.provider.net:587"
username = "relay"
`
	t.Run("env", func(t *testing.T) {
		t.Setenv("RELAY_TEST_PW", "env-secret-1")
		c, err := config.Load(writeConfig(t, base+`password_env = "RELAY_TEST_PW"`))
		require.NoError(t, err)
		require.Equal(t, "env-secret-1", c.Upstream.Password)
		var out strings.Builder
		c.Summary(&out)
		require.NotContains(t, out.String(), "env-secret-1")
	})
	t.Run("file", func(t *testing.T) {
		path := writeConfig(t, base+`password_file = "pw"`)
		pw := filepath.Join(filepath.Dir(path), "pw")
		require.NoError(t, os.WriteFile(pw, []byte("file-secret-2\n"), 0o644))
		c, err := config.Load(path)
		require.NoError(t, err)
		require.Equal(t, "file-secret-2", c.Upstream.Password, "the final newline is not part of it")
		require.Equal(t, pw, c.Upstream.PasswordFile)
		require.Len(t, c.Warnings, 1, "a world-readable password file is worth a warning")
		var out strings.Builder
		c.Summary(&out)
		require.NotContains(t, out.String(), "file-secret-2")
	})
}

// TestBadConfigs loads every testdata/bad/NN-name.toml, each wrong in its own way, and
// compares the error with NN-name.err: the text Load returns (relay check prints it under
// its heading) for the file loaded by its base name from its own directory, with the
// repository root written $ROOT (go test -update rewrites the .err files; review the diff). The lines marked "# <-"
// are where the problems must be reported: every marked line has one and every problem is
// on a marked line, so the positions stay checked by hand across an -update.
func TestBadConfigs(t *testing.T) {
	t.Chdir("testdata/bad")
	// Made absolute after the Chdir, as Load makes the file's directory: spelled alike.
	top, err := filepath.Abs("../../../..")
	require.NoError(t, err)
	files, err := filepath.Glob("*.toml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	hash := regexp.MustCompile(`password_hash\s*=\s*"([^"]+)"`)
	for _, name := range files {
		base := strings.TrimSuffix(name, ".toml")
		t.Run(base, func(t *testing.T) {
			src, err := os.ReadFile(name)
			require.NoError(t, err)
			_, err = config.Load(name)
			require.Error(t, err)

			var marked, reported []int
			for i, l := range strings.Split(string(src), "\n") {
				if strings.Contains(l, "# <-") {
					marked = append(marked, i+1)
				}
			}
			for _, p := range problems(t, err) {
				if p.Line == 0 {
					require.Equal(t, name, p.Pos, p.Key)
					continue
				}
				require.True(t, strings.HasPrefix(p.Pos, fmt.Sprintf("%s:%d:", name, p.Line)), "Pos %q, Line %d", p.Pos, p.Line)
				if n := len(reported); n == 0 || reported[n-1] != p.Line {
					reported = append(reported, p.Line)
				}
			}
			require.Equal(t, marked, reported, "the lines marked # <- and the lines with a problem, in:\n%s", err)
			// A password hash is a secret too, even a broken one.
			for _, m := range hash.FindAllStringSubmatch(string(src), -1) {
				require.NotContains(t, err.Error(), m[1])
			}

			got := strings.ReplaceAll(err.Error(), top, "$ROOT") + "\n"
			if *update {
				require.NoError(t, os.WriteFile(base+".err", []byte(got), 0o644))
			}
			want, err := os.ReadFile(base + ".err")
			require.NoError(t, err)
			require.Equal(t, string(want), got, "run go test ./internal/config -run BadConfigs -update and review the diff")
		})
	}
}

func TestUnreadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.toml")
	_, err := config.Load(path)
	probs := problems(t, err)
	require.Equal(t, path, probs[0].Pos)
	require.Equal(t, path+": cannot read: no such file or directory", err.Error())
}

// testdata/keys/README.md prints the test keys' records: they must be those of the files.
func TestKeysReadme(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(root, "testdata/keys/README.md"))
	require.NoError(t, err)
	for file, name := range map[string]string{
		"default.pem":             "default._domainkey.example.net.",
		"example.com.ed25519.pem": "s2026._domainkey.example.com.",
		"example.com.rsa.pem":     "s2026r._domainkey.example.com.",
	} {
		key, err := dkimkey.Load(filepath.Join(root, "testdata/keys", file))
		require.NoError(t, err)
		rec, err := dkimkey.Record(key.Public())
		require.NoError(t, err)
		var chunks []string
		for len(rec) > 255 { // one TXT string holds at most 255 bytes
			chunks, rec = append(chunks, strconv.Quote(rec[:255])), rec[255:]
		}
		chunks = append(chunks, strconv.Quote(rec))
		require.Contains(t, string(readme), name+" TXT "+strings.Join(chunks, " "), file)
	}
}
