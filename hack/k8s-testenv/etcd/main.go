// Command etcd is the upstream etcd server, built from the Go module proxy.
// It is the same entry point as etcd's own main package (go.etcd.io/etcd/v3).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
