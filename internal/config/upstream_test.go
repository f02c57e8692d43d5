package config_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

// With tls = "none" the relay sends AUTH in clear, as told (SPEC §7); relay check says so.
func TestUpstreamClearPasswordWarning(t *testing.T) {
	const base = `
[sender]
fallback = "noreply@example.net"
[spf]
enabled = false
[dkim]
private_key = "KEYS/default.pem"
[upstream]
`
	for _, tc := range []struct {
		name     string
		upstream string
		warn     bool
	}{
		{name: "none with username", upstream: `address = "smtp.provider.net:587"
tls = "none"
username = "relay"
password_env = "RELAY_TEST_PW"`, warn: true},
		{name: "none without username", upstream: `address = "smtp.provider.net:25"
tls = "none"`},
		{name: "starttls with username", upstream: `address = "smtp.provider.net:587"
tls = "starttls"
username = "relay"
password_env = "RELAY_TEST_PW"`},
		{name: "opportunistic with username", upstream: `address = "smtp.provider.net:587"
tls = "opportunistic"
username = "relay"
password_env = "RELAY_TEST_PW"`},
		{name: "none with username to a file", upstream: `address = "file:./outbox"
tls = "none"
username = "relay"
password_env = "RELAY_TEST_PW"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RELAY_TEST_PW", "env-secret-3")
			c, err := config.Load(writeConfig(t, base+tc.upstream))
			require.NoError(t, err, "a warning, not an error: tls = \"none\" is the admin's to choose")
			if !tc.warn {
				require.Empty(t, c.Warnings)
				return
			}
			require.Equal(t, []string{`upstream.tls = "none" with upstream.username "relay": the password crosses the network ` +
				`to smtp.provider.net:587 in clear (AUTH PLAIN and LOGIN are only base64); use "starttls" or "implicit" unless that path is trusted`}, c.Warnings)
			require.NotContains(t, c.Warnings[0], "env-secret-3")
		})
	}
}
