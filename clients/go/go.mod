module github.com/antiphon/antiphon/clients/go

go 1.19

// The versions the client is tested with (Debian 12's packages); `go mod tidy` adds the rest.
require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
