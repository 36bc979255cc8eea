# Inputs of the bake. Kiln's Python passes them (-var-file); see docs/image.md.

# --- what is baked (no defaults: every bake names them) --------------------------------------

variable "layer" {
  type        = string
  default     = "app"
  description = "Which image to bake: \"foundation\" (on the base image) or \"app\" (on a foundation)."
  validation {
    condition     = contains(["foundation", "app"], var.layer)
    error_message = "The layer variable must be \"foundation\" or \"app\"."
  }
}

variable "base_ami" {
  type        = string
  default     = ""
  description = "The app layer: the base AMI its foundation was baked on (provenance only)."
}

variable "app_version" {
  type        = string
  description = "Release version (PEP 440) from versions.toml."
}

variable "fingerprint" {
  type        = string
  description = "Content fingerprint of everything that determines the image."
}

variable "git_sha" {
  type        = string
  description = "Commit the bake was made from."
}

variable "built_at" {
  type        = string
  description = "Bake start time, RFC 3339 UTC (2026-11-22T02:30:00Z)."
}

variable "builder" {
  type        = string
  description = "Who or what ran the bake (user@host, CI run URL)."
}

variable "wheelhouse" {
  type        = string
  description = "A tar archive on this machine: the foundation's wheels (the app's dependencies, boto3) or the app's wheel."
}

variable "ssm_agent_url" {
  type        = string
  default     = ""
  description = "The foundation: the SSM agent's .deb to install (a pinned version's URL); empty: none."
}

variable "ssm_agent_sha256" {
  type        = string
  default     = ""
  description = "The SHA-256 of ssm_agent_url's package, checked before it is installed."
}

variable "app_name" {
  type        = string
  default     = "webapp"
  description = "Prefix of the AMI name and value of the kiln:app tag."
}

variable "manifest_path" {
  type        = string
  default     = "manifest.json"
  description = "Where the manifest post-processor writes the build result Kiln reads."
}

# --- where and from what ---------------------------------------------------------------------

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "source_ami" {
  type        = string
  default     = ""
  description = "A pinned base AMI id. Empty: the newest AMI matching the filter below."
}

variable "source_ami_owners" {
  type        = list(string)
  default     = ["136693071363"] # Debian
  description = "Owners for the base AMI search when source_ami is empty."
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name pattern for the base AMI search when source_ami is empty."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Empty: the default VPC's default subnet."
}

variable "security_group_ids" {
  type        = list(string)
  default     = []
  description = "Empty: Packer creates a temporary group open to SSH only."
}

variable "root_device_name" {
  type        = string
  default     = "/dev/xvda"
  description = "The base AMI's root device; must match it for the root volume to be encrypted."
}

variable "root_volume_size" {
  type        = number
  default     = 8
  description = "GiB; at least the base AMI's root snapshot."
}

variable "assume_role_arn" {
  type        = string
  default     = ""
  description = "A role for Packer to assume (refreshed by the AWS SDK). Empty: use the credentials as given."
}

variable "assume_role_session_name" {
  type        = string
  default     = "kiln"
  description = "Who assumes the role, as CloudTrail shows it (kiln-<user>)."
}

variable "assume_role_external_id" {
  type        = string
  default     = ""
  description = "The ExternalId the role's trust policy demands, if any."
}

variable "assume_role_duration_seconds" {
  type        = number
  default     = 3600
  description = "Length of one assumed-role session; the SDK assumes the role again before it ends."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the root volume. Empty: the account's default EBS key."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Regions besides var.region to copy the AMI to (encrypted with each region's default EBS key)."
}

variable "ami_users" {
  type        = list(string)
  default     = []
  description = "Account ids allowed to launch the AMI."
}

# --- the sandbox (and unusual networks) ------------------------------------------------------

variable "ec2_endpoint" {
  type        = string
  default     = ""
  description = "EC2 endpoint URL; the sandbox's loopback URL there, empty on AWS."
}

variable "ssh_interface" {
  type        = string
  default     = ""
  description = "public_ip, private_ip, public_dns, private_dns or session_manager; the sandbox uses private_ip."
}

variable "ssh_host" {
  type        = string
  default     = ""
  description = "Dial this address instead of the one ssh_interface picks (tests, debugging)."
}

variable "ssh_port" {
  type    = number
  default = 22
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

variable "ssh_keypair_name" {
  type        = string
  default     = ""
  description = "An existing key pair to launch with (with ssh_private_key_file). Empty: a temporary one."
}

variable "ssh_private_key_file" {
  type    = string
  default = ""
}

# --- a bastion between this machine and the build instance ------------------------------------

variable "ssh_handshake_attempts" {
  type        = number
  default     = 10
  description = "How many times Packer tries a login the build instance refuses before it gives up."
}

variable "ssh_bastion_host" {
  type        = string
  default     = ""
  description = "Reach the build instance through this SSH jump host (Packer's and Ansible's connections). Empty: directly."
}

variable "ssh_bastion_port" {
  type    = number
  default = 22
}

variable "ssh_bastion_username" {
  type        = string
  default     = ""
  description = "Login on the bastion. Empty: ssh_username."
}

variable "ssh_bastion_private_key_file" {
  type        = string
  default     = ""
  description = "Key for the bastion (PEM or OpenSSH, unencrypted). Empty: ssh-agent (ssh_bastion_agent_auth)."
}

variable "ssh_bastion_agent_auth" {
  type        = bool
  default     = false
  description = "Log in to the bastion with the keys of the ssh-agent at SSH_AUTH_SOCK."
}

variable "ssh_bastion_known_hosts" {
  type        = string
  default     = ""
  description = "A known_hosts file with the bastion's host key: Ansible's jump checks it strictly. Empty: ssh's defaults."
}
