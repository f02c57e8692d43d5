package main

import (
	"fmt"

	"relay/internal/server"
)

func cmdCheck(e env) int {
	fs := e.flags("check")
	cfgPath := configFlag(fs)
	if code, ok := e.parse(fs); !ok {
		return code
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	if _, err := server.NewState(cfg); err != nil {
		fmt.Fprintf(e.stderr, "relay: %s: %v\n", *cfgPath, err)
		return 1
	}
	fmt.Fprintf(e.stdout, "%s: configuration is valid\n\n", *cfgPath)
	cfg.Summary(e.stdout)
	return 0
}
