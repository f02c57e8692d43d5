package names

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDomain(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM":           "example.com",
		"example.com.":          "example.com",
		" example.com ":         "example.com",
		"Bücher.example":        "xn--bcher-kva.example",
		"xn--bcher-kva.example": "xn--bcher-kva.example",
	} {
		got, err := Domain(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	_, err := Domain("ｅｘａｍｐｌｅ.com") // full-width: not mapped (see idnaProfile)
	require.Error(t, err)
}

func TestAddressDomain(t *testing.T) {
	require.Equal(t, "example.com", AddressDomain("a@b@Example.com"))
	require.Equal(t, "", AddressDomain("no-at"))
	require.Equal(t, "b.example", AddressDomain(`"a@b"@b.example`))
	require.Equal(t, "example.com", AddressDomain("x@example.com."))
	require.Equal(t, "", AddressDomain("a@ｅｘａｍｐｌｅ.com"))
}

func TestFieldName(t *testing.T) {
	for _, ok := range []string{"From", "X-Original-From", "List-Unsubscribe-Post", "a!#$%&'*+-.^_`|~"} {
		require.True(t, FieldName(ok), ok)
	}
	for _, bad := range []string{"", "Subject:", "X Y", "X;Y", "Ü", "X\x00"} {
		require.False(t, FieldName(bad), bad)
	}
}

func TestHostname(t *testing.T) {
	for in, want := range map[string]string{
		"Customer.Example.": "customer.example",
		"Bücher.example":    "xn--bcher-kva.example",
		"a-b.c0.example":    "a-b.c0.example",
	} {
		got, err := Hostname(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "localhost", "not a domain", "a..example", "-a.example", "a-.example",
		"a_b.example", "a.example;rm", strings.Repeat("a", 64) + ".example", strings.Repeat("a.", 127) + "example"} {
		_, err := Hostname(bad)
		require.Error(t, err, bad)
	}
}
