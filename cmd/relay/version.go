package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and commit override what the build info says, for builds made without the
// repository's .git (a source tarball, a container build context without it):
//
//	go build -ldflags "-X main.version=v1.2.0 -X main.commit=0123abc" ./cmd/relay
var (
	version string
	commit  string
)

// buildInfo is what `relay version` prints.
type buildInfo struct {
	Version, Commit, Time, Go string
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: "(devel)", Commit: "unknown", Time: "unknown", Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			b.Version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			b.Go = bi.GoVersion
		}
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			case "vcs.time":
				b.Time = s.Value
			}
		}
		if rev != "" {
			b.Commit = rev
			if modified == "true" {
				b.Commit += "-dirty"
			}
		}
	}
	if version != "" {
		b.Version = version
	}
	if commit != "" {
		b.Commit = commit
	}
	return b
}

func cmdVersion(e env) int {
	fs := e.flags("version")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "relay version: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	b := readBuildInfo()
	fmt.Fprintf(e.stdout, "version: %s\ncommit:  %s\ntime:    %s\ngo:      %s %s/%s\n",
		b.Version, b.Commit, b.Time, b.Go, runtime.GOOS, runtime.GOARCH)
	return 0
}
