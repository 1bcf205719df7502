// Package config defines lazypull's configuration file (TOML, by default
// /etc/lazypull/config.toml): one struct, every key documented with its unit
// and default, the defaults in one place (Default), and Validate reporting
// every problem at once.
package config
