package authz

import (
	"testing"
	"time"

	"relay/internal/config"
	"relay/internal/resolver"
)

func newResolver(t testing.TB, timeout time.Duration, servers ...string) *resolver.Resolver {
	t.Helper()
	r, err := resolver.New(servers, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func dur(d time.Duration) config.Duration { return config.Duration{Duration: d} }
