package config_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

// An HTTP listener that other hosts can reach without a password is warned about.
func TestHTTPListenWarning(t *testing.T) {
	for _, tc := range []struct {
		listen, auth string
		warn         bool
	}{
		{"127.0.0.1:8025", "", false},
		{"[::1]:8025", "", false},
		{"localhost:8025", "", false},
		{"", "", false},
		{":8025", "", true},
		{"0.0.0.0:8025", "", true},
		{"192.0.2.1:8025", "", true},
		{"relay.example.net:8025", "", true},
		{":8025", "username = \"admin\"\npassword_hash = \"$2a$04$YiCXWcuvbVHT7UE6MfjNjOFr/lPEgokdSIA8njNclTMXc1z1MndZC\"\n", false},
	} {
		t.Run(tc.listen+" "+fmt.Sprint(tc.auth != ""), func(t *testing.T) {
			path := writeConfig(t, fmt.Sprintf(`
[sender]
fallback = "noreply@example.net"
[spf]
enabled = false
[dkim]
private_key = "KEYS/default.pem"
delegation_check = false
[upstream]
address = "file:./outbox"
[http]
listen = %q
%s`, tc.listen, tc.auth))
			c, err := config.Load(path)
			require.NoError(t, err)
			if tc.warn {
				require.Len(t, c.Warnings, 1)
				require.Contains(t, c.Warnings[0], "is not a loopback address and [http] has no username")
			} else {
				require.Empty(t, c.Warnings)
			}
		})
	}
}
