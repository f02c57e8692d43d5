package config

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/stretchr/testify/require"
)

// tricky holds every construct the scanner must get right.
const tricky = `top = 1
text = """
fake = "not a key"
[not.a.table]
"""
lit = '''a '' b''' # '''
[smtp] # a comment with [brackets] and key = 1
  listen = "x" # trailing
allow = [
  "a", # one
  # between
  [1, 2], "b",
]
a.b."c.d" = 1
inline = { x = 1, y = { z = "}" } }

[[users]]
name = "u0"
[[users]]
name = "u1"
[users.extra]
k = 1

[dkim]
[[dkim.keys]]
domain = "d0"
[[dkim.keys]]
domain = "d1"
[[units]]
name = 'u"0'
`

func TestLocate(t *testing.T) {
	pos := locate(tricky)
	want := map[string]position{
		"top":                    {1, 1},
		"text":                   {2, 1},
		"lit":                    {6, 1},
		"smtp":                   {7, 1},
		"smtp.listen":            {8, 3},
		"smtp.allow":             {9, 1},
		"smtp.allow[0]":          {10, 3},
		"smtp.allow[1]":          {12, 3},
		"smtp.allow[1][1]":       {12, 7},
		"smtp.allow[2]":          {12, 11},
		"smtp.a.b.c.d":           {14, 1},
		"smtp.inline":            {15, 1},
		"smtp.inline.y.z":        {15, 25},
		"users":                  {17, 1},
		"users[0]":               {17, 1},
		"users[0].name":          {18, 1},
		"users[1]":               {19, 1},
		"users[1].name":          {20, 1},
		"users[1].extra.k":       {22, 1},
		"dkim.keys[0].domain":    {26, 1},
		"dkim.keys[1]":           {27, 1},
		"dkim.keys[1].domain":    {28, 1},
		"units[0].name":          {30, 1},
		"smtp.inline.y.z.absent": {15, 25}, // find falls back to the nearest ancestor
		"users[1].absent":        {19, 1},
	}
	for key, p := range want {
		got, ok := pos.find(key)
		require.True(t, ok, key)
		require.Equal(t, p, got, key)
	}
	for _, key := range []string{"fake", "not", "not.a.table", "text.fake"} {
		_, ok := pos[key]
		require.False(t, ok, "%s is inside a string", key)
	}
}

var indexRE = regexp.MustCompile(`\[\d+\]`)

// FuzzLocate: on any file the decoder accepts, locate finds every (bare) key the decoder
// found, and stays inside the file.
func FuzzLocate(f *testing.F) {
	for _, p := range []string{"../../config.example.toml", "testdata/summary.toml"} {
		b, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(string(b))
	}
	f.Add(tricky)
	f.Add("a = [[1], {b = 2}]\n[[x]]\n[[x.y]]\nz = '''\n'''\n")
	f.Fuzz(func(t *testing.T, src string) {
		var v map[string]any
		md, err := toml.Decode(src, &v)
		if err != nil {
			return
		}
		pos := locate(src)
		lines := strings.Count(src, "\n") + 1
		plain := map[string]bool{}
		for k, p := range pos {
			require.True(t, p.line >= 1 && p.line <= lines && p.col >= 1, "%s at %v", k, p)
			plain[indexRE.ReplaceAllString(k, "")] = true
		}
		for _, k := range md.Keys() {
			if s := k.String(); !strings.ContainsAny(s, `"'`) {
				require.True(t, plain[s], "key %q not located in %q", s, src)
			}
		}
	})
}
