# The images Kiln bakes, in two layers (var.layer):
# - "foundation": Debian 12 + everything that does not change with the app's version,
#   provisioned by ansible/foundation.yml on the base image;
# - "app": the web app at one version, provisioned by ansible/playbook.yml on a foundation.
# Loads on Packer 1.6.6 as is; for Packer >= 1.7 run `packer init packer/plugins` first
# (see docs/image.md).

locals {
  # AMI names allow letters, digits and ()[] ./-'@_ only; a PEP 440 local version has "+".
  safe_version = regex_replace(var.app_version, "[^A-Za-z0-9()./_-]", "_")
  # The bake time keeps names unique when the same fingerprint is baked again (--force).
  name_stamp = regex_replace(var.built_at, "[^0-9]", "")
  ami_names = {
    foundation = "${var.app_name}-foundation-${substr(var.fingerprint, 0, 16)}-${local.name_stamp}"
    app        = "${var.app_name}-${local.safe_version}-${substr(var.fingerprint, 0, 16)}-${local.name_stamp}"
  }
  ami_name = local.ami_names[var.layer]

  common = {
    "kiln:app"         = var.app_name
    "kiln:fingerprint" = var.fingerprint
    "kiln:git-sha"     = var.git_sha
    "kiln:built-at"    = var.built_at
    "kiln:builder"     = var.builder
  }
  # The ancestry: a foundation names its base AMI; an app image its foundation (the AMI the
  # build started from, rendered by the builder) and the foundation's base.
  layer_tags = {
    foundation = {
      "kiln:layer"    = "foundation"
      "kiln:base-ami" = "{{ .SourceAMI }}"
    }
    app = {
      "kiln:layer"      = "app"
      "kiln:version"    = var.app_version
      "kiln:foundation" = "{{ .SourceAMI }}"
      "kiln:base-ami"   = var.base_ami
    }
  }
  provenance = merge(local.common, local.layer_tags[var.layer])
  playbook   = var.layer == "foundation" ? "foundation.yml" : "playbook.yml"

  # Through a bastion, Packer's own connection uses the ssh_bastion_* settings below (it does not
  # check the bastion's host key), and Ansible, which runs its own ssh (use_proxy = false), jumps
  # with this ProxyCommand; that one checks the bastion's key against ssh_bastion_known_hosts.
  bastion_user = var.ssh_bastion_username == "" ? var.ssh_username : var.ssh_bastion_username
  bastion_jump = join(" ", compact([
    "ssh -W %h:%p -p ${var.ssh_bastion_port} -o BatchMode=yes -o ConnectTimeout=10",
    var.ssh_bastion_private_key_file == "" ? "" : "-o IdentitiesOnly=yes -i '${var.ssh_bastion_private_key_file}'",
    var.ssh_bastion_known_hosts == "" ? "" : "-o StrictHostKeyChecking=yes -o UserKnownHostsFile='${var.ssh_bastion_known_hosts}'",
    "${local.bastion_user}@${var.ssh_bastion_host}",
  ]))
  ansible_jump = var.ssh_bastion_host == "" ? [] : ["--ssh-common-args", "-o ProxyCommand=\"${local.bastion_jump}\""]
}

source "amazon-ebs" "app" {
  region              = var.region
  custom_endpoint_ec2 = var.ec2_endpoint

  # With a bake role, Packer assumes it itself from the credentials Kiln hands it, so the AWS SDK
  # refreshes the role's credentials however long the bake takes.
  dynamic "assume_role" {
    for_each = var.assume_role_arn == "" ? [] : [var.assume_role_arn]
    content {
      role_arn         = assume_role.value
      session_name     = var.assume_role_session_name
      external_id      = var.assume_role_external_id
      duration_seconds = var.assume_role_duration_seconds
    }
  }

  source_ami = var.source_ami
  dynamic "source_ami_filter" {
    for_each = var.source_ami == "" ? [var.source_ami_name] : []
    content {
      most_recent = true
      owners      = var.source_ami_owners
      filters = {
        name                = source_ami_filter.value
        architecture        = "x86_64"
        root-device-type    = "ebs"
        virtualization-type = "hvm"
      }
    }
  }

  instance_type      = var.instance_type
  subnet_id          = var.subnet_id
  security_group_ids = var.security_group_ids

  # Encrypt the build instance's root volume, so the AMI's snapshot is encrypted as taken
  # (no encrypt-by-copy step; the sandbox has no CopyImage data plane either).
  launch_block_device_mappings {
    device_name           = var.root_device_name
    volume_size           = var.root_volume_size
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    encrypted             = true
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }

  ami_name        = local.ami_name
  ami_description = "${var.app_name} ${var.app_version} (${var.fingerprint}) baked by Kiln"
  ami_regions     = var.ami_regions
  ami_users       = var.ami_users
  tags            = merge(local.provenance, { Name = local.ami_name })
  snapshot_tags   = merge(local.provenance, { Name = local.ami_name })
  run_tags        = merge(local.provenance, { Name = "kiln-bake-${local.ami_name}" })
  run_volume_tags = merge(local.provenance, { Name = "kiln-bake-${local.ami_name}" })

  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_interface        = var.ssh_interface
  ssh_host             = var.ssh_host
  ssh_port             = var.ssh_port
  ssh_keypair_name     = var.ssh_keypair_name
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "10m"
  # A login sshd refuses is tried this many times (Packer's default 10, about 7 s each).
  ssh_handshake_attempts = var.ssh_handshake_attempts

  ssh_bastion_host             = var.ssh_bastion_host
  ssh_bastion_port             = var.ssh_bastion_port
  ssh_bastion_username         = local.bastion_user
  ssh_bastion_private_key_file = var.ssh_bastion_private_key_file
  ssh_bastion_agent_auth       = var.ssh_bastion_agent_auth
}

build {
  sources = ["source.amazon-ebs.app"]

  provisioner "ansible" {
    playbook_file = "${path.root}/../ansible/${local.playbook}"
    user          = var.ssh_username
    # Packer's SSH proxy offers only ssh-rsa, which current OpenSSH refuses: connect directly.
    use_proxy = false
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible/ansible.cfg",
      "ANSIBLE_FORCE_COLOR=0",
    ]
    extra_arguments = concat(local.ansible_jump, [
      "--extra-vars", "ansible_python_interpreter=/usr/bin/python3",
      "--extra-vars", jsonencode({
        kiln_version          = var.app_version
        kiln_fingerprint      = var.fingerprint
        kiln_git_sha          = var.git_sha
        kiln_built_at         = var.built_at
        kiln_base_ami         = var.layer == "foundation" ? build.SourceAMI : var.base_ami
        kiln_foundation       = var.layer == "foundation" ? "" : build.SourceAMI
        kiln_wheelhouse       = var.wheelhouse
        kiln_ssm_agent_url    = var.layer == "foundation" ? var.ssm_agent_url : ""
        kiln_ssm_agent_sha256 = var.ssm_agent_sha256
      }),
    ])
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      version     = var.app_version
      fingerprint = var.fingerprint
      git_sha     = var.git_sha
      ami_name    = local.ami_name
    }
  }
}
