// Package proto holds the gRPC protocol between the corral agent and
// external driver plugins: driver.proto and the code generated from it.
//
// Regenerating needs protoc (Debian: protobuf-compiler), protoc-gen-go
// v1.36.12 and protoc-gen-go-grpc v1.5.1 on PATH:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
//	go generate ./plugins/drivers/proto
package proto

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative driver.proto
