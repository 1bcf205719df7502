// Package control is the daemon's control API: JSON over HTTP on a unix
// socket (mode 0600) under the daemon's root. `lazypull status`, `lazypull
// prune` and `lazypull auth-helper` are its clients. The wire types carry no
// secrets except the credentials a client hands over.
package control
