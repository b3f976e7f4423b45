"""The vmhealth demo (scripts/demo): the product as installed, in a private libvirtd."""
