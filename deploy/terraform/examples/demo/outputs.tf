output "endpoint_service_name" {
  description = "The fleet's VPC endpoint service, which the demo's GWLB endpoint connects to."
  value       = module.fleet.endpoint_service_name
}

output "gwlb_arn" {
  description = "ARN of the Gateway Load Balancer."
  value       = module.fleet.gwlb_arn
}

output "target_group_arn" {
  description = "ARN of the appliances' target group: aws elbv2 describe-target-health --target-group-arn ..."
  value       = module.fleet.target_group_arn
}

output "autoscaling_group_name" {
  description = "The appliances' Auto Scaling group."
  value       = module.fleet.autoscaling_group_name
}

output "log_group_name" {
  description = "The fleet's CloudWatch Logs group (flow records and journal): aws logs tail NAME --follow."
  value       = module.fleet.log_group_name
}

output "gwlb_endpoint_id" {
  description = "The GWLB endpoint the hosts' routes point at."
  value       = aws_vpc_endpoint.gwlbe.id
}

output "host_a_private_ip" {
  description = "Host a's address inside the VPC (nc and ping target)."
  value       = aws_instance.host_a.private_ip
}

output "host_b_private_ip" {
  description = "Host b's address inside the VPC."
  value       = aws_instance.host_b.private_ip
}

output "host_a_public_ip" {
  description = "Host a's public address, for SSH (ec2-user)."
  value       = aws_instance.host_a.public_ip
}

output "host_b_public_ip" {
  description = "Host b's public address, for SSH (ec2-user)."
  value       = aws_instance.host_b.public_ip
}
