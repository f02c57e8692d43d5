// Package deps pins the module's dependencies while the packages that use them are being
// written in parallel. Delete it once every dependency has a real importer.
package deps

import (
	_ "blitiri.com.ar/go/spf"
	_ "github.com/BurntSushi/toml"
	_ "github.com/emersion/go-msgauth/dkim"
	_ "github.com/emersion/go-msgauth/dmarc"
	_ "github.com/emersion/go-sasl"
	_ "github.com/emersion/go-smtp"
	_ "github.com/miekg/dns"
	_ "github.com/stretchr/testify/require"
	_ "golang.org/x/crypto/bcrypt"
	_ "golang.org/x/net/idna"
	_ "golang.org/x/sync/singleflight"
	_ "golang.org/x/time/rate"
)
