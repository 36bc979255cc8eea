# For Packer >= 1.7 only: `packer init packer/plugins` installs these, then
# `packer build packer/` finds them. Packer 1.6.6 has both built in and refuses this block,
# which is why it lives outside the directory the build loads.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.0, < 2.0.0"
      source  = "github.com/hashicorp/amazon"
    }
    ansible = {
      version = ">= 1.1.0, < 2.0.0"
      source  = "github.com/hashicorp/ansible"
    }
  }
}
