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

output "log_group_name" {
  description = "The fleet's CloudWatch Logs group: streams INSTANCE_ID/flows (flow records) and INSTANCE_ID/journal (the appliance's journal), e.g. for aws logs tail."
  value       = aws_cloudwatch_log_group.appliances.name
}

output "log_group_arn" {
  description = "ARN of the fleet's CloudWatch Logs group."
  value       = aws_cloudwatch_log_group.appliances.arn
}

output "instance_profile_name" {
  description = "The instance profile the appliances run with: iam_instance_profile_name, or the module's own."
  value       = local.instance_profile_name
}

output "instance_role_arn" {
  description = "ARN of the module's instance role (null when iam_instance_profile_name is given), e.g. to attach more policies."
  value       = one(aws_iam_role.appliance[*].arn)
}

output "logs_policy_json" {
  description = "The IAM policy the CloudWatch agent needs on the fleet's log group: attach it to your own profile's role when you give iam_instance_profile_name."
  value       = jsonencode(local.logs_policy)
}
