package main

import (
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVersion(t *testing.T) {
	code, out, errs := runCLI(t, "", "version")
	require.Equal(t, 0, code, errs)
	require.Empty(t, errs)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 4, out)
	require.True(t, strings.HasPrefix(lines[0], "version: "), out)
	require.True(t, strings.HasPrefix(lines[1], "commit:  "), out)
	require.True(t, strings.HasPrefix(lines[2], "time:    "), out)
	require.Equal(t, "go:      "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH, lines[3])

	code, _, errs = runCLI(t, "", "version", "extra")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "usage: relay version")
}

func TestVersionOverride(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "0123abc"
	code, out, _ := runCLI(t, "", "version")
	require.Equal(t, 0, code)
	require.Contains(t, out, "version: v1.2.3\ncommit:  0123abc\n")
}
