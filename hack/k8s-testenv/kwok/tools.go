//go:build tools

// Package tools pins the kwok controller built by ../build.sh, so that `go mod tidy`
// keeps every module it needs in go.mod and go.sum.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
