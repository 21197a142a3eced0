output "gwlb_arn" {
  description = "ARN of the Gateway Load Balancer."
  value       = aws_lb.this.arn
}

output "target_group_arn" {
  description = "ARN of the appliances' target group (GENEVE 6081), e.g. for aws elbv2 describe-target-health."
  value       = aws_lb_target_group.appliances.arn
}

output "endpoint_service_name" {
  description = "Service name consumers create GWLB endpoints (aws_vpc_endpoint, type GatewayLoadBalancer) for."
  value       = aws_vpc_endpoint_service.this.service_name
}

output "endpoint_service_id" {
  description = "Id of the VPC endpoint service, e.g. to accept endpoint connections when acceptance is required."
  value       = aws_vpc_endpoint_service.this.id
}

output "autoscaling_group_name" {
  description = "Name of the appliances' Auto Scaling group."
  value       = aws_autoscaling_group.appliances.name
}

output "security_group_id" {
  description = "The appliances' security group (GWLB subnets only)."
  value       = aws_security_group.appliances.id
}

output "launch_template_id" {
  description = "The appliances' launch template."
  value       = aws_launch_template.appliance.id
}

output "user_data" {
  description = "The rendered cloud-config each appliance boots with (the site config it writes)."
  value       = local.user_data
}
